"""Running parts: each rkd command in a subprocess (resumable, one marker per finished command), parts in
parallel on ``--jobs`` workers, SIGTERM/SIGINT stopping the running commands and starting no new one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks.method_comparison.collect import collect_result
from benchmarks.method_comparison.plan import (
    Part,
    Step,
    is_done,
    part_dir,
    read_result,
    result_path,
    steps_of,
)
from benchmarks.method_comparison.settings import REPO, Settings, child_env
from rkd.atomic import atomic_write_text, try_lock

PRINT_LOCK = threading.Lock()
LIVE: set[subprocess.Popen[bytes]] = set()  # the rkd commands running now (stopped on SIGTERM)
STOPPING = threading.Event()  # set by SIGTERM/SIGINT: no new command starts



def say(message: str) -> None:
    """Print one line (thread-safe), with the time."""
    with PRINT_LOCK:
        print(f"[{datetime.now().strftime('%H:%M:%S')}] {message}", flush=True)


def stop_children(signum: int, frame: Any) -> None:
    """On SIGTERM or SIGINT: stop the running rkd commands (SIGTERM; a background job's children ignore SIGINT)
    and start no further command; what they checkpointed is kept for the next ``run``."""
    STOPPING.set()
    with PRINT_LOCK:
        for proc in LIVE:
            proc.terminate()
    raise KeyboardInterrupt


@contextmanager
def part_lock(folder: Path) -> Iterator[bool]:
    """An exclusive, non-blocking lock on ``folder/.part.lock``: yields False when another process holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    fh = try_lock(folder / ".part.lock")
    try:
        yield fh is not None
    finally:
        if fh is not None:
            fh.close()


def run_step(step: Step, folder: Path) -> float:
    """Run one rkd command (output appended to ``folder/log.txt``); return its seconds or raise on failure.

    A step recorded as done with the same command (``folder/.steps/<name>.json``) is skipped (0 seconds)."""
    marker = REPO / folder / ".steps" / f"{step.name}.json"
    if marker.exists() and json.loads(marker.read_text()).get("command") == step.text:
        return float(json.loads(marker.read_text())["seconds"])
    log = REPO / folder / "log.txt"
    if STOPPING.is_set():
        raise RuntimeError("stopped before it started")
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(f"\n### {datetime.now(timezone.utc).isoformat(timespec='seconds')} {step.text}\n")
        fh.flush()
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "rkd", *step.args], cwd=REPO, env=child_env(),
                                stdout=fh, stderr=subprocess.STDOUT)
        with PRINT_LOCK:
            LIVE.add(proc)
        try:
            _, status, usage = os.wait4(proc.pid, 0)  # this child's own resource usage (peak RSS)
            rc = proc.returncode = os.waitstatus_to_exitcode(status)
        finally:
            with PRINT_LOCK:
                LIVE.discard(proc)
        seconds = time.perf_counter() - t0
        peak_mib = usage.ru_maxrss / 1024  # Linux: KiB
        fh.write(f"### exit {rc} after {seconds:.1f} s, peak RSS {peak_mib:.0f} MiB\n")
    if rc not in step.ok:
        tail = "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-12:])
        raise RuntimeError(f"`{step.text}` exited {rc} after {seconds:.0f} s; see {folder / 'log.txt'}:\n{tail}")
    atomic_write_text(marker, json.dumps({"command": step.text, "seconds": seconds, "exit": rc,
                                     "peak_rss_mib": round(peak_mib),
                                     "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}))
    return seconds


def run_part(cfg: Settings, part: Part) -> str:
    """Run a part's remaining commands and write its result JSON; returns done | busy (raises on failure)."""
    folder = part_dir(cfg, part.id)
    with part_lock(REPO / folder) as locked:
        if not locked:
            return "busy"
        if is_done(cfg, part):
            return "done"
        steps = steps_of(cfg, part)
        seconds: dict[str, float] = {}
        for step in steps:
            say(f"{part.id}: {step.text}")
            seconds[step.name] = run_step(step, folder)
        record = collect_result(cfg, part, steps, seconds, previous=read_result(cfg, part.id))
        atomic_write_text(REPO / result_path(cfg, part.id), json.dumps(record, indent=1) + "\n")
        return "done"


def run_all(cfg: Settings, parts: list[Part], *, jobs: int, max_minutes: float | None) -> int:
    """Run ``parts`` (plan order, ``jobs`` at a time, dependencies first); exit status 0 when all finished."""
    deadline = time.monotonic() + max_minutes * 60 if max_minutes else None
    selected = {p.id for p in parts}
    pending = [p for p in parts if not is_done(cfg, p)]
    failed: dict[str, str] = {}
    running: dict[Future[str], Part] = {}
    say(f"{len(pending)} part(s) to run, {len(parts) - len(pending)} already done; {jobs} at a time")
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        while pending or running:
            if deadline is not None and time.monotonic() > deadline and pending:
                say(f"--max-minutes reached: not starting {len(pending)} part(s): {', '.join(p.id for p in pending)}")
                failed.update({p.id: "not started (time limit)" for p in pending})
                pending = []
            for part in list(pending):
                if len(running) >= jobs:
                    break
                blocked = [d for d in part.deps if read_result(cfg, d) is None]  # needs its checkpoint, no more
                if any(d in failed for d in blocked) or any(d not in selected for d in blocked):
                    failed[part.id] = f"needs {', '.join(blocked)} (not done)"
                    say(f"{part.id}: skipped, {failed[part.id]}")
                    pending.remove(part)
                    continue
                if blocked:
                    continue  # its dependencies are queued or running
                pending.remove(part)
                running[pool.submit(run_part, cfg, part)] = part
            if not running:
                if pending:  # only parts waiting on something that cannot finish
                    failed.update({p.id: "dependency not done" for p in pending})
                    pending = []
                break
            finished, _ = wait(running, timeout=1.0, return_when=FIRST_COMPLETED)  # a timeout lets SIGTERM in
            for fut in finished:
                part = running.pop(fut)
                try:
                    status = fut.result()
                except Exception as exc:  # noqa: BLE001 - one failed part must not stop the others
                    failed[part.id] = str(exc).splitlines()[0]
                    say(f"{part.id}: FAILED: {exc}")
                    continue
                if status == "busy":
                    failed[part.id] = "locked by another run.py process"
                    say(f"{part.id}: skipped, another run.py process is running it")
                else:
                    say(f"{part.id}: done -> {result_path(cfg, part.id)}")
    if failed:
        say(f"{len(failed)} part(s) not finished: " + "; ".join(f"{k} ({v})" for k, v in failed.items()))
        return 1
    say("all selected parts are done")
    return 0
