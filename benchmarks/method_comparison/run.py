"""Method comparison of robust distillation on CIFAR-10 at CPU scale, in resumable parts.

Every part calls the real ``rkd`` CLI in a subprocess: ``rkd distill`` (base.yaml plus ``--set`` overrides) and
``rkd eval`` for a (student, method, seed) row or an adv_path ablation; ``rkd quantize`` (PTQ, or robust QAT)
and ``rkd verify`` for a deployment row; ``rkd teacher`` when the teacher checkpoint is missing. A part writes
``benchmarks/results/method_comparison/<part>.json`` only once it is complete (atomically), so a killed run
resumes by skipping finished parts; a half-done part resumes its training (``--resume``), its AutoAttack run
(``--aa-state``) or its verification (``--state``), and skips the commands it already finished. What runs is
set in comparison.yaml (students, methods, seeds, ablations, evaluation, deployment) and base.yaml (the
training recipe); README.md gives the sizing and the measured costs.

Run from the repository root, one thread per process (two processes on a 2-core machine)::

    source .venv/bin/activate
    export OMP_NUM_THREADS=1
    python benchmarks/method_comparison/run.py plan                 # every part, its cost, which are done
    python benchmarks/method_comparison/run.py run --jobs 2         # everything not done, two parts at a time
    python benchmarks/method_comparison/run.py run --part r18-ard-s0 --max-minutes 60
    python benchmarks/method_comparison/run.py table                # results/method_comparison/table.{md,json}
    python benchmarks/method_comparison/run.py probe                # re-measure the costs behind the estimates

``--smoke`` (before the command) runs the same pipeline on synthetic data with tiny settings into separate
folders (``runs/method_comparison-smoke``, ``benchmarks/results/method_comparison-smoke``).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from rkd.atomic import atomic_write_text, try_lock
from rkd.config import apply_overrides

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CONFIG = HERE / "comparison.yaml"
SCHEMA_VERSION = 1
ATTACK_LABELS = {"clean": "Clean", "fgsm": "FGSM", "pgd20": "PGD-20", "cw": "CW-inf", "autoattack": "AutoAttack",
                 "transfer": "transfer"}
PRINT_LOCK = threading.Lock()
LIVE: set[subprocess.Popen[bytes]] = set()  # the rkd commands running now (stopped on SIGTERM)
STOPPING = threading.Event()  # set by SIGTERM/SIGINT: no new command starts


# ----------------------------------------------------------------------------------------------- settings


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` merged in: nested mappings merge, anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@dataclass
class Settings:
    """comparison.yaml (with its ``smoke`` section merged in under ``--smoke``) and the effective recipe."""

    raw: dict[str, Any]
    smoke: bool

    @classmethod
    def load(cls, path: Path, *, smoke: bool, data_root: str | None = None) -> Settings:
        """Read the settings file; ``smoke`` merges its ``smoke:`` section; ``data_root`` replaces the file's."""
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        smoke_section = raw.pop("smoke", {}) or {}
        if smoke:
            raw = deep_merge(raw, smoke_section)
        if data_root is not None:
            raw["data_root"] = data_root
        return cls(raw=raw, smoke=smoke)

    def __getitem__(self, key: str) -> Any:
        return self.raw[key]

    @property
    def runs_dir(self) -> Path:
        """Where the parts' run folders go (relative to the repository root)."""
        return Path(self.raw["runs_dir"])

    @property
    def results_dir(self) -> Path:
        """Where the parts' result JSONs and the table go."""
        return Path(self.raw["results_dir"])

    @property
    def recipe_overrides(self) -> list[str]:
        """Overrides applied to base.yaml for every part (the smoke settings)."""
        return list(self.raw.get("recipe_overrides") or [])

    def recipe(self) -> dict[str, Any]:
        """base.yaml with the global overrides applied (what every part starts from)."""
        raw = yaml.safe_load((REPO / self.raw["recipe"]).read_text(encoding="utf-8"))
        return apply_overrides(raw, self.recipe_overrides)

    @property
    def steps(self) -> int:
        """m: the attack steps of every method (base.yaml's student.method.steps)."""
        return int(self.recipe()["student"]["method"]["steps"])

    def fill(self, items: Sequence[str]) -> list[str]:
        """Overrides with ``{steps}`` replaced by m."""
        return [str(item).format(steps=self.steps) for item in items]

    def data_args(self) -> list[str]:
        """``--data-root X`` when the settings name one."""
        return ["--data-root", str(self.raw["data_root"])] if self.raw.get("data_root") else []


# ----------------------------------------------------------------------------------------------- the plan


@dataclass
class Step:
    """One rkd command of a part; ``ok`` lists the exit codes that count as success."""

    name: str
    args: list[str]
    ok: tuple[int, ...] = (0,)

    @property
    def text(self) -> str:
        """The command as a user would type it."""
        return shlex.join(["rkd", *self.args])


@dataclass
class Part:
    """A unit of work with one result file: the teacher, a training + evaluation run, or a deployment row."""

    id: str
    group: str  # teacher | main | ablation | deploy
    student: str | None = None
    method: str | None = None
    variant: str | None = None
    seed: int | None = None
    overrides: list[str] = field(default_factory=list)
    autoattack: bool = False
    deploy: str | None = None  # ptq | qat
    deps: list[str] = field(default_factory=list)


def train_part_id(student: str, method: str, seed: int, variant: str | None = None) -> str:
    """``r18-ard-s0``; ablations ``r18-adv_path-no_targeted-s0``."""
    return f"{student}-{method}-{variant}-s{seed}" if variant else f"{student}-{method}-s{seed}"


def build_plan(cfg: Settings) -> list[Part]:
    """Every part in run order: teacher (if missing), the main rows seed by seed, ablations, deployment."""
    parts: list[Part] = []
    teacher_missing = not (REPO / cfg["teacher"]["checkpoint"]).exists()
    teacher_deps = ["teacher"] if teacher_missing else []
    if teacher_missing:
        parts.append(Part(id="teacher", group="teacher"))
    eval_cfg = cfg["eval"]
    method_over = cfg.raw.get("method_overrides") or {}

    def main_part(student: str, method: str, seed: int) -> Part:
        over = [*student_overrides(cfg, student), f"student.method.name={method}", f"seed={seed}",
                *cfg.fill(method_over.get(method, []))]
        return Part(id=train_part_id(student, method, seed), group="main", student=student, method=method,
                    seed=seed, overrides=over, autoattack=seed in eval_cfg["autoattack_seeds"],
                    deps=list(teacher_deps) if method != "pgd_at" else [])

    for seed in cfg["seeds"]:
        parts += [main_part(s, m, seed) for s in cfg["students"] for m in cfg["methods"]]
    abl = cfg["ablations"]
    student = abl["student"]
    for seed in abl["seeds"]:
        for variant, items in abl["variants"].items():
            over = [*student_overrides(cfg, student), "student.method.name=adv_path", f"seed={seed}",
                    *cfg.fill(items)]
            parts.append(Part(id=train_part_id(student, "adv_path", seed, variant), group="ablation",
                              student=student, method="adv_path", variant=variant, seed=seed, overrides=over,
                              autoattack=ablation_autoattack(abl, variant) and seed in eval_cfg["autoattack_seeds"],
                              deps=list(teacher_deps)))
    dep = cfg.raw.get("deploy")  # optional: a comparison without deployment rows leaves it out
    for student in cfg["students"] if dep else []:
        source = train_part_id(student, dep["method"], dep["seed"])
        for mode in ("ptq", "qat"):
            parts.append(Part(id=f"deploy-{student}-{mode}", group="deploy", student=student, method=dep["method"],
                              seed=dep["seed"], deploy=mode, deps=[source, *teacher_deps]))
    return parts


def ablation_autoattack(abl: dict[str, Any], variant: str) -> bool:
    """Whether an ablation variant gets the AutoAttack evaluation: ``ablations.autoattack`` is true (all of them)
    or a list of variant names."""
    aa = abl.get("autoattack")
    return variant in aa if isinstance(aa, list) else bool(aa)


def student_overrides(cfg: Settings, student: str) -> list[str]:
    """The student's architecture and its own training settings (``students.<key>.overrides``: what differs from
    base.yaml for that student, e.g. a longer schedule for a student that needs one)."""
    spec = cfg["students"][student]
    return [f"student.model.name={spec['name']}", f"student.model.width={spec['width']}",
            *cfg.fill(spec.get("overrides") or [])]


def per_student_text(value: Any) -> str:
    """``1000`` or ``r18: 1000, mnv2: 200`` for a per-student setting."""
    return ", ".join(f"{k}: {v}" for k, v in value.items()) if isinstance(value, dict) else str(value)


def per_student(value: Any, student: str) -> int:
    """A setting given as one number or as a mapping from student key to number."""
    return int(value[student]) if isinstance(value, dict) else int(value)


def part_dir(cfg: Settings, part_id: str) -> Path:
    """The part's run folder (relative to the repository root)."""
    return cfg.runs_dir / part_id


def result_path(cfg: Settings, part_id: str) -> Path:
    """The part's result JSON (relative to the repository root)."""
    return cfg.results_dir / f"{part_id}.json"


def read_result(cfg: Settings, part_id: str) -> dict[str, Any] | None:
    """The part's result record (None: not written yet)."""
    path = REPO / result_path(cfg, part_id)
    return json.loads(path.read_text()) if path.exists() else None


def lacking(cfg: Settings, part: Part, rec: dict[str, Any] | None) -> str | None:
    """What ``rec`` lacks that comparison.yaml now asks of ``part`` (None: complete). A result without the
    AutoAttack evaluation its seed now asks for, or with one on another n, is incomplete: ``run`` then runs only
    that evaluation (the part's other commands are recorded as done and are skipped)."""
    if rec is None:
        return "not run"
    if part.group not in ("main", "ablation") or not part.autoattack:
        return None
    assert part.student is not None
    name, want = cfg["eval"]["autoattack"], per_student(cfg["eval"]["autoattack_n"], part.student)
    have = rec["eval"]["attacks"].get(name)
    if have is None:
        return f"{label(name)} (n = {want}) not run"
    return None if have["n"] == want else f"{label(name)} on n = {have['n']}, not {want}"


def is_done(cfg: Settings, part: Part) -> bool:
    """Whether the part's result JSON exists and holds everything comparison.yaml asks of it."""
    return lacking(cfg, part, read_result(cfg, part.id)) is None


def pgd_attack(cfg: Settings) -> str:
    """The evaluation's PGD attack (``pgd20``): the probe's yardstick of attack cost."""
    return next(a for a in cfg["eval"]["attacks"].split(",") if a.startswith("pgd"))


def eval_attacks(cfg: Settings, autoattack: bool) -> str:
    """The attack list of a part's ``rkd eval``."""
    attacks = cfg["eval"]["attacks"]
    return f"{attacks},{cfg['eval']['autoattack']}" if autoattack else attacks


def steps_of(cfg: Settings, part: Part) -> list[Step]:
    """The rkd commands of ``part``, in order."""
    run = part_dir(cfg, part.id)
    teacher = cfg["teacher"]["checkpoint"]
    data = cfg["data"]
    if part.group == "teacher":
        t = cfg["teacher"]
        sets = [a for o in t.get("overrides") or [] for a in ("--set", o)]
        return [Step("teacher", ["teacher", t["recipe"], "--out", t["out"], "--resume", *cfg.data_args(), *sets])]
    if part.group in ("main", "ablation"):
        sets = [a for o in cfg.recipe_overrides + part.overrides for a in ("--set", o)]
        ckpt = run / "student" / "model.safetensors"
        ev = cfg["eval"]
        assert part.student is not None
        common = ["--data", data, *cfg.data_args(), "--seed", str(ev["seed"])]
        steps = [
            Step("distill", ["distill", cfg["recipe"], "--teacher", teacher, "--out", str(run / "student"),
                             "--resume", *cfg.data_args(), *sets]),
            Step("eval", ["eval", str(ckpt), *common, "--n", str(ev["n"]), "--attacks", eval_attacks(cfg, False),
                          "--report", str(run / "eval.json"), "--aa-state", str(run / "eval.aa-state")]),
        ]
        if part.autoattack:  # its own command, so that adding AutoAttack to a finished part runs only AutoAttack
            aa_n = per_student(ev["autoattack_n"], part.student)
            steps.append(Step("eval_aa", ["eval", str(ckpt), *common, "--n", str(aa_n), "--attacks", ev["autoattack"],
                                          "--report", str(run / "eval-aa.json"),
                                          "--aa-state", str(run / f"eval-aa-n{aa_n}.aa-state")]))
        return steps
    dep = cfg["deploy"]
    assert part.student is not None and part.seed is not None
    source = part_dir(cfg, train_part_id(part.student, dep["method"], part.seed)) / "student" / "model.safetensors"
    bundle = run / "bundle"
    quantize = ["quantize", str(source), "--calib-data", data, *cfg.data_args(), "--calib-n", str(dep["calib_n"]),
                "--eval-n", str(dep["eval_n"]), "--out", str(bundle), "--force"]
    if part.deploy == "qat":
        q = dep["qat"]
        qat_steps = q.get("steps") or cfg.steps
        quantize += ["--qat", "--epochs", str(q["epochs"]), "--qat-method", q["method"], "--teacher", teacher,
                     "--train-n", str(q["train_n"]), "--qat-steps", str(qat_steps)]
    v = dep["verify"]
    verify = ["verify", "--engine", str(bundle / "model.int8.onnx"), "--data", data, *cfg.data_args(),
              "--n", str(per_student(v["n"], part.student)), "--attacks", v["attacks"], "--report", str(run / "verify"),
              "--state", str(run / "verify-state"), "--no-gates"]
    return [Step("quantize", quantize), Step("verify", verify)]  # measured, not gated


# ----------------------------------------------------------------------------------------------- estimates


class Estimator:
    """Minutes per part, from the probe's measurements (``probe.json``) and from finished parts of the same kind
    (their measured time replaces the probe's estimate once one exists)."""

    def __init__(self, cfg: Settings) -> None:
        self.cfg = cfg
        path = REPO / cfg.results_dir / "probe.json"
        self.probe: dict[str, Any] | None = json.loads(path.read_text()) if path.exists() else None
        self.measured: dict[tuple[Any, ...], list[float]] = {}
        self.measured_without_aa: dict[tuple[Any, ...], list[float]] = {}
        self.aa_per_image: dict[tuple[Any, ...], list[float]] = {}  # a separate AutoAttack eval's s per image
        for part in build_plan(cfg):
            rec = read_result(cfg, part.id)
            if rec is not None:
                timing = rec.get("timing", {})
                aa_n = (rec.get("eval") or {}).get("autoattack_eval", {}).get("n")
                if aa_n and "eval_aa_s" in timing:
                    self.aa_per_image.setdefault(self.row(part), []).append(timing["eval_aa_s"] / aa_n)
                seconds = timing.get("total_s")
                if seconds:
                    self.measured.setdefault(self.kind(part), []).append(seconds)
                    if not part.autoattack or "eval_aa_s" in timing:  # AutoAttack timed apart, if it ran
                        self.measured_without_aa.setdefault(self.row(part), []).append(
                            seconds - timing.get("eval_aa_s", 0.0))

    @staticmethod
    def kind(part: Part) -> tuple[Any, ...]:
        """Parts expected to cost the same."""
        return part.group, part.student, part.method, part.variant, part.autoattack, part.deploy

    @staticmethod
    def row(part: Part) -> tuple[Any, ...]:
        """Parts expected to cost the same apart from a separately timed AutoAttack evaluation."""
        return part.group, part.student, part.method, part.variant, part.deploy

    def minutes(self, part: Part) -> tuple[float | None, str]:
        """(estimated minutes, where the number comes from)."""
        rec = read_result(self.cfg, part.id)
        if rec is not None and (what := lacking(self.cfg, part, rec)) is not None:
            return self.autoattack_minutes(part), f"AutoAttack only ({what})"
        same = self.measured.get(self.kind(part))
        if same:
            return statistics.median(same) / 60, f"measured ({len(same)} part{'s' if len(same) > 1 else ''})"
        # another seed of the same row that also ran AutoAttack on its own n: its time without that evaluation
        other = self.measured_without_aa.get(self.row(part))
        if other and not part.autoattack:
            return (statistics.median(other) / 60,
                    f"measured without AutoAttack ({len(other)} part{'s' if len(other) > 1 else ''})")
        if part.group == "teacher":
            return None, "not probed (about 45 min on one core, recipes/teacher-cifar10-cpu.yaml)"
        if self.probe is None:
            return None, "no probe.json: run `run.py probe`"
        try:
            seconds = self._train_eval(part) if part.group in ("main", "ablation") else self._deploy(part)
        except KeyError as exc:
            return None, f"not in probe.json ({exc})"
        stale = self.stale(part.student) if part.student else []
        return seconds / 60, f"probe (stale: probed with {', '.join(stale)}; rerun `run.py probe`)" if stale else "probe"

    def autoattack_minutes(self, part: Part) -> float | None:
        """The separate AutoAttack evaluation of ``part`` alone: other seeds' measured seconds per image, scaled to
        its n (AutoAttack's time follows the images that stay robust, so this is rough), else the probe's."""
        assert part.student is not None
        ev = self.cfg["eval"]
        n = per_student(ev["autoattack_n"], part.student)
        per_image = self.aa_per_image.get(self.row(part))
        if per_image:
            return statistics.median(per_image) * n / 60
        if self.probe is None:
            return None
        return self.eval_seconds(part.student, ev["autoattack"], n) / 60

    def stale(self, student: str) -> list[str]:
        """The student settings the probe ran with that differ from comparison.yaml's now (none: up to date)."""
        runs = ((self.probe or {}).get("distill") or {}).get(student) or {}
        command = next(iter(runs.values()), {}).get("command", "")
        probed = dict(a.split("=", 1) for a in command.split() if a.startswith("student.model."))
        now = dict(o.split("=", 1) for o in student_overrides(self.cfg, student) if o.startswith("student.model."))
        return [f"{k.removeprefix('student.model.')}={v}" for k, v in probed.items() if k in now and now[k] != v]

    def _ratio(self, student: str, method: str) -> float:
        """Training-step cost of ``student`` over the probe's reference student for ``method`` (1 for it)."""
        p = self.probe or {}
        ref = p["eval"][student].get("scaled_from", student)
        return p["distill"][student][method]["step_s"] / p["distill"][ref][method]["step_s"]

    def _eval_ref(self, student: str) -> tuple[dict[str, Any], float]:
        """The measured evaluation probe that stands for ``student`` and the attack-cost ratio to apply."""
        p = self.probe or {}
        ev = p["eval"][student]
        if "scaled_from" in ev:
            return p["eval"][ev["scaled_from"]], float(ev["ratio"])
        return ev, 1.0

    def eval_seconds(self, student: str, attacks: str, n: int) -> float:
        """``rkd eval`` at ``n`` images: per-attack probe seconds scaled linearly in n, plus start-up."""
        ref, ratio = self._eval_ref(student)
        return ref["overhead_s"] + sum(ref["attacks"][a]["seconds"] for a in attacks.split(",")) * n / ref["n"] * ratio

    def holdout_seconds(self, student: str, train: dict[str, Any]) -> float:
        """The PGD-k check on held-out images at the end of training, scaled from the probe's PGD-20."""
        ref, ratio = self._eval_ref(student)
        pgd = pgd_attack(self.cfg)
        per_step = ref["attacks"][pgd]["seconds"] / int(pgd.removeprefix("pgd"))
        return per_step * int(train["eval_n"]) / ref["n"] * int(train["eval_pgd_steps"]) * ratio

    def _train_eval(self, part: Part) -> float:
        p = self.probe or {}
        recipe = apply_overrides(self.cfg.recipe(), part.overrides)
        data = recipe["data"]
        n_train = data.get("train_subset") or int(data.get("synthetic_n") or 0) - int(data.get("holdout") or 0)
        steps_per_epoch = int(n_train) // int(data["batch_size"])
        train_cfg = recipe["student"]["train"]
        assert part.student is not None and part.method is not None
        d = p["ablations"][part.student][part.variant] if part.variant else p["distill"][part.student][part.method]
        train = d["overhead_s"] + d["step_s"] * steps_per_epoch * int(train_cfg["epochs"])
        train += self.holdout_seconds(part.student, train_cfg)
        ev = self.cfg["eval"]
        secs = train + self.eval_seconds(part.student, eval_attacks(self.cfg, False), int(ev["n"]))
        if part.autoattack:
            secs += self.eval_seconds(part.student, ev["autoattack"], per_student(ev["autoattack_n"], part.student))
        return secs

    def _deploy(self, part: Part) -> float:
        p = self.probe or {}
        assert part.student is not None
        dep = self.cfg["deploy"]
        ref_student = p["eval"][part.student].get("scaled_from", part.student)
        d = p["deploy"][ref_student]
        ratio = self._eval_ref(part.student)[1]
        quant = (d["quantize_s"] - d["quantize_eval_s"] + d["quantize_eval_s"] * dep["eval_n"] / d["n"]) * ratio
        n_verify = per_student(dep["verify"]["n"], part.student)
        verify = d["verify_overhead_s"] + (d["verify_s"] - d["verify_overhead_s"]) * n_verify / d["verify_n"]
        total = quant + verify * ratio
        if part.deploy == "qat":
            q = dep["qat"]
            steps = int(q["train_n"]) // d["qat_batch"] * int(q["epochs"])
            total += d["qat_step_s"] * steps * self._ratio(part.student, "adv_path")
        return total


def makespan(parts: Sequence[Part], minutes: dict[str, float], jobs: int) -> float:
    """Wall minutes of running ``parts`` in plan order on ``jobs`` workers (greedy list scheduling that waits
    for each part's dependencies)."""
    free = [0.0] * jobs
    end: dict[str, float] = {}
    for part in parts:
        ready = max([end.get(d, 0.0) for d in part.deps], default=0.0)
        i = min(range(jobs), key=lambda k: free[k])
        start = max(free[i], ready)
        free[i] = end[part.id] = start + minutes.get(part.id, 0.0)
    return max(free, default=0.0)


# ----------------------------------------------------------------------------------------------- running


def say(message: str) -> None:
    """Print one line (thread-safe), with the time."""
    with PRINT_LOCK:
        print(f"[{datetime.now().strftime('%H:%M:%S')}] {message}", flush=True)


def child_env() -> dict[str, str]:
    """The environment of the rkd subprocesses: OMP_NUM_THREADS passed through (1 when unset)."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("COLUMNS", "120")
    return env


def stop_children(signum: int, frame: Any) -> None:
    """On SIGTERM or SIGINT: stop the running rkd commands (SIGTERM; a background job's children ignore SIGINT)
    and start no further command; what they checkpointed is kept for the next ``run``."""
    STOPPING.set()
    with PRINT_LOCK:
        for proc in LIVE:
            proc.terminate()
    raise KeyboardInterrupt


def machine() -> dict[str, Any]:
    """The machine and thread settings the harness ran on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "omp_num_threads": child_env()["OMP_NUM_THREADS"],
            "python": platform.python_version(), "platform": platform.platform()}


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


def step_peak_rss(folder: Path, name: str) -> int | None:
    """The peak resident memory (MiB) of a finished step's process, from its marker (None: not recorded)."""
    marker = REPO / folder / ".steps" / f"{name}.json"
    return json.loads(marker.read_text()).get("peak_rss_mib") if marker.exists() else None


def summarize_attacks(report: dict[str, Any]) -> dict[str, Any]:
    """Per attack: accuracy, count, n, 95% Wilson interval, seconds (and AutoAttack's breakdown)."""
    out: dict[str, Any] = {}
    for name, res in report["attacks"].items():
        out[name] = {k: res[k] for k in ("acc", "correct", "n", "ci95", "seconds") if k in res}
        if "details" in res:
            out[name]["details"] = {k: v for k, v in res["details"].items() if k != "per_sample"}
    return out


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file (empty when missing)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def class_breakdown(report: dict[str, Any]) -> dict[str, Any] | None:
    """Per attack, accuracy per true class and accuracy without the class the model predicts most on clean
    inputs (a model that favours one class keeps that class's samples under every attack), from the report's
    ``by_class`` section (``rkd eval`` writes it). None for a report without one."""
    bc = report.get("by_class")
    if not bc:
        return None
    top = bc["most_predicted"]
    return {"most_predicted": top, "share": bc["predicted"][top] / report["n"],
            "attacks": {name: {"per_class": bc["acc"][name], "without_most_predicted": bc["without_most_predicted"][name]}
                        for name in report["per_sample"]}}


def same_checkpoint_by_class(previous: dict[str, Any] | None, report: dict[str, Any]) -> dict[str, Any] | None:
    """``previous``'s per-class breakdown when it evaluated the checkpoint and images ``report`` did (else None)."""
    ev = (previous or {}).get("eval") or {}
    same = ev.get("checkpoint_sha256") == report["model"]["sha256"] and ev.get("data") == report["data"]
    return ev.get("by_class") if same else None


def collect_result(cfg: Settings, part: Part, steps: list[Step], seconds: dict[str, float],
                   previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """The part's result record, read from the reports its commands wrote; ``previous`` (the part's earlier record,
    when a later comparison.yaml asked more of it) supplies what an older report lacks: the per-class section of
    an evaluation of the same checkpoint, from before ``rkd eval`` wrote one."""
    run = REPO / part_dir(cfg, part.id)
    rec: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "kind": "rkd-method-comparison-part", "part": part.id,
        "group": part.group, "student": part.student,
        "model": cfg["students"].get(part.student) if part.student else None,
        "method": part.method, "variant": part.variant, "seed": part.seed, "overrides": part.overrides,
        "smoke": cfg.smoke, "commands": [s.text for s in steps], "run_dir": str(part_dir(cfg, part.id)),
        "timing": {f"{k}_s": round(v, 1) for k, v in seconds.items()} | {"total_s": round(sum(seconds.values()), 1)},
        "peak_rss_mib": {k: v for k in seconds if (v := step_peak_rss(part_dir(cfg, part.id), k)) is not None},
        "machine": machine(), "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if part.group == "teacher":
        rec["checkpoint"] = cfg["teacher"]["checkpoint"]
        return rec
    if part.group in ("main", "ablation"):
        report = json.loads((run / "eval.json").read_text())
        recipe = apply_overrides(cfg.recipe(), part.overrides)
        metrics = read_jsonl(run / "student" / "metrics.jsonl")
        holdout = [m for m in metrics if m.get("event") == "eval"]
        rec |= {
            "recipe": {"data": recipe["data"], "method": recipe["student"]["method"],
                       "train": recipe["student"]["train"], "teacher": cfg["teacher"]["checkpoint"],
                       "teacher_sha256": hashlib.sha256((REPO / cfg["teacher"]["checkpoint"]).read_bytes()).hexdigest()},
            "train": {"segments": sum(1 for m in metrics if m.get("event") in ("start", "resume")),
                      "holdout": holdout[-1] if holdout else None},
            "eval": {"n": report["n"], "seed": report["seed"], "eps": report["eps_text"], "data": report["data"],
                     "attacks": summarize_attacks(report), "worst_case": report["worst_case"],
                     "checkpoint_sha256": report["model"]["sha256"], "warnings": report.get("warnings", []),
                     "by_class": class_breakdown(report) or same_checkpoint_by_class(previous, report),
                     "report": str(part_dir(cfg, part.id) / "eval.json")},
            "versions": report.get("versions"), "device": report.get("device"),
        }
        aa_path = run / "eval-aa.json"
        if part.autoattack and aa_path.exists():  # AutoAttack on its own (smaller) n
            aa = json.loads(aa_path.read_text())
            name = cfg["eval"]["autoattack"]
            rec["eval"]["attacks"][name] = summarize_attacks(aa)[name]
            rec["eval"]["autoattack_eval"] = {"n": aa["n"], "data": aa["data"], "clean": aa["attacks"]["clean"]["acc"],
                                              "report": str(part_dir(cfg, part.id) / "eval-aa.json")}
        return rec
    manifest = json.loads((run / "bundle" / "manifest.json").read_text())
    quant = manifest.get("quantize", {})
    verify = json.loads((run / "verify" / "verify.json").read_text())
    rec |= {
        "deploy": part.deploy,
        "quantize": {k: quant.get(k) for k in ("profile", "settings", "calibration", "evaluation")}
        | ({"qat": {k: v for k, v in quant["qat"].items() if k != "per_sample"}} if quant.get("qat") else {}),
        "verify": {k: verify.get(k) for k in ("n", "eps_text", "seed", "clean_acc", "robust_acc", "autoattack_acc",
                                              "worst_case", "float", "drop", "agreement", "warnings", "semantics",
                                              "data", "artifact", "timing")}
        | {"attacks": summarize_attacks(verify), "report": str(part_dir(cfg, part.id) / "verify" / "verify.json")},
        "versions": verify.get("versions"), "device": verify.get("device"),
    }
    return rec


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


# ----------------------------------------------------------------------------------------------- probe


def probe_distill(cfg: Settings, student: str, name: str, overrides: list[str], folder: Path,
                  steps: int) -> dict[str, Any]:
    """Run ``steps`` real training steps of one configuration; the step time excludes the first step."""
    recipe = cfg.recipe()
    batch = int(recipe["data"]["batch_size"])
    run = folder / f"{student}-{name}"
    sets = [*cfg.recipe_overrides, *student_overrides(cfg, student), f"data.train_subset={steps * batch}", "student.train.epochs=1", "student.train.eval_n=0",
            "student.train.log_every=1", "student.train.checkpoint_every_steps=null", *overrides]
    if cfg.smoke:
        sets = [s for s in sets if not s.startswith("data.train_subset=")]
    step = Step(f"probe-{student}-{name}", ["distill", cfg["recipe"], "--teacher", cfg["teacher"]["checkpoint"],
                                          "--out", str(run), *cfg.data_args(), *[a for o in sets for a in ("--set", o)]])
    seconds = run_step(step, folder)
    recs = [m for m in read_jsonl(REPO / run / "metrics.jsonl") if "img_per_s" in m]
    elapsed = [(m["step"], m["step"] * batch / m["img_per_s"]) for m in recs]
    (s0, t0), (s1, t1) = elapsed[0], elapsed[-1]
    step_s = (t1 - t0) / (s1 - s0) if s1 > s0 else t1 / s1
    return {"step_s": round(step_s, 3), "first_step_s": round(t0, 3), "steps": s1, "batch": batch,
            "wall_s": round(seconds, 1), "overhead_s": round(seconds - step_s * s1, 1), "command": step.text}


def probe_eval(cfg: Settings, student: str, ckpt: str, folder: Path) -> dict[str, Any]:
    """``rkd eval`` with every attack of the comparison on the probe's n images; seconds per attack."""
    pc = cfg["probe"]
    report = folder / f"eval-{student}.json"
    step = Step(f"probe-eval-{student}", ["eval", ckpt, "--data", cfg["data"], *cfg.data_args(), "--n",
                                          str(pc["eval_n"]), "--seed", str(cfg["eval"]["seed"]),
                                          "--attacks", eval_attacks(cfg, True), "--report", str(report)])
    seconds = run_step(step, folder)
    rep = json.loads((REPO / report).read_text())
    att = {k: {"seconds": v["seconds"], "acc": v["acc"], "correct": v["correct"]} for k, v in rep["attacks"].items()}
    say(f"probe eval {student} n={rep['n']}: " + ", ".join(f"{k} {v['seconds']:.0f} s" for k, v in att.items()))
    return {"checkpoint": ckpt, "n": rep["n"], "attacks": att, "wall_s": round(seconds, 1),
            "overhead_s": round(seconds - sum(a["seconds"] for a in att.values()), 1), "command": step.text}


def probe(cfg: Settings) -> int:
    """Measure what the estimates need: a few training steps per (student, method) and per ablation, one small
    evaluation per student (on a trained reference checkpoint when there is one), PTQ, QAT and verify."""
    pc = cfg["probe"]
    folder = cfg.runs_dir / "probe"
    if not (REPO / cfg["teacher"]["checkpoint"]).exists():
        raise SystemExit(f"probe: the teacher {cfg['teacher']['checkpoint']} is missing: `run.py run --part teacher`")
    if (REPO / folder).exists():
        import shutil

        shutil.rmtree(REPO / folder)
    (REPO / folder).mkdir(parents=True)
    out: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "kind": "rkd-method-comparison-probe",
                           "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
                           "smoke": cfg.smoke, "steps_m": cfg.steps, "distill": {}, "ablations": {}, "eval": {},
                           "deploy": {}}
    method_over = cfg.raw.get("method_overrides") or {}
    for student in cfg["students"]:
        out["distill"][student] = {}
        for method in cfg["methods"]:
            over = [f"student.method.name={method}", *cfg.fill(method_over.get(method, []))]
            out["distill"][student][method] = r = probe_distill(cfg, student, method, over, folder, pc["steps"])
            say(f"probe {student} {method}: {r['step_s']:.2f} s/step (first {r['first_step_s']:.1f} s, "
                f"overhead {r['overhead_s']:.0f} s)")
    abl = cfg["ablations"]
    out["ablations"][abl["student"]] = {}
    for variant, items in abl["variants"].items():
        over = ["student.method.name=adv_path", *cfg.fill(items)]
        r = probe_distill(cfg, abl["student"], f"abl-{variant}", over, folder, pc["steps"])
        out["ablations"][abl["student"]][variant] = r
        say(f"probe {abl['student']} adv_path {variant}: {r['step_s']:.2f} s/step")
    reference = {k: v for k, v in (pc.get("reference") or {}).items() if (REPO / v).exists()}
    if not reference:  # no trained checkpoint: the probe's own few-step pgd_at student (an optimistic AA cost)
        first = next(iter(cfg["students"]))
        reference = {first: str(folder / f"{first}-pgd_at" / "model.safetensors")}
        say(f"probe: no trained reference checkpoint; evaluating the probe's {first} pgd_at run instead")
    for student, ckpt in reference.items():
        out["eval"][student] = probe_eval(cfg, student, ckpt, folder)
    measured = next(iter(reference))
    ref_eval = out["eval"][measured]
    pgd = pgd_attack(cfg)
    ref_cost = ref_eval["attacks"][pgd]["seconds"] / max(1, ref_eval["attacks"]["clean"]["correct"])
    for student in cfg["students"]:
        if student in out["eval"]:
            continue
        # no trained checkpoint: the cost of the PGD attack per attacked (clean-correct) image on the probe's own
        # pgd_at run of this student, relative to the reference student's, scales the reference's costs
        ckpt = str(folder / f"{student}-pgd_at" / "model.safetensors")
        report = folder / f"eval-{student}-{pgd}.json"
        step = Step(f"probe-eval-{student}", ["eval", ckpt, "--data", cfg["data"], *cfg.data_args(), "--n",
                                              str(cfg["eval"]["n"]), "--attacks", f"clean,{pgd}", "--report", str(report)])
        run_step(step, folder)
        att = json.loads((REPO / report).read_text())["attacks"]
        cost = att[pgd]["seconds"] / max(1, att["clean"]["correct"])
        out["eval"][student] = {"scaled_from": measured, "ratio": round(cost / ref_cost, 3),
                                "scale": f"{pgd} seconds per attacked image, this student's probe pgd_at run over "
                                         f"{measured}'s reference", pgd: att[pgd], "clean": att["clean"],
                                "command": step.text}
        say(f"probe eval {student}: attack cost x{cost / ref_cost:.2f} of {measured}")
    data = cfg["data"]
    # deployment: PTQ (export, calibration, float vs INT8 check), QAT steps, verify; on the measured reference
    ckpt = reference[measured]
    bundle = folder / "bundle"
    dep = cfg["deploy"]
    recipe = cfg.recipe()
    batch = int(recipe["data"]["batch_size"])
    quant = Step("probe-ptq", ["quantize", ckpt, "--calib-data", data, *cfg.data_args(), "--calib-n", str(dep["calib_n"]),
                               "--eval-n", str(pc["eval_n"]), "--out", str(bundle), "--force"])
    quant_s = run_step(quant, folder)
    manifest = json.loads((REPO / bundle / "manifest.json").read_text())["quantize"]
    quant_eval_s = sum((manifest.get("evaluation") or {}).get("seconds", {}).values())
    verify = Step("probe-verify", ["verify", "--engine", str(bundle / "model.int8.onnx"), "--data", data,
                                   *cfg.data_args(), "--n", str(pc["verify_n"]), "--attacks", dep["verify"]["attacks"],
                                   "--report", str(folder / "verify"), "--no-gates"])
    verify_s = run_step(verify, folder)
    vrep = json.loads((REPO / folder / "verify" / "verify.json").read_text())
    attack_s = sum(float(v) for k, v in vrep["timing"].items() if k in ("float_s", "engine_s", "checks_s"))
    qat_bundle = folder / "bundle-qat"
    qat = Step("probe-qat", ["quantize", ckpt, "--calib-data", data, *cfg.data_args(), "--calib-n",
                             str(dep["calib_n"]), "--eval-n", "0", "--out", str(qat_bundle), "--force", "--qat",
                             "--epochs", "1", "--qat-method", dep["qat"]["method"], "--teacher",
                             cfg["teacher"]["checkpoint"], "--train-n", str(pc["steps"] * batch),
                             "--qat-steps", str(dep["qat"].get("steps") or cfg.steps)])
    qat_s = run_step(qat, folder)
    qsec = json.loads((REPO / qat_bundle / "manifest.json").read_text())["quantize"]["qat"]
    out["deploy"][measured] = {
        "checkpoint": ckpt, "n": pc["eval_n"], "quantize_s": round(quant_s, 1), "quantize_eval_s": quant_eval_s,
        "verify_n": vrep["n"], "verify_s": round(verify_s, 1), "verify_overhead_s": round(verify_s - attack_s, 1),
        "verify_timing": vrep["timing"], "qat_wall_s": round(qat_s, 1), "qat_batch": qsec["batch_size"],
        "qat_steps": qsec["steps_per_epoch"], "qat_step_s": round(qsec["seconds"] / qsec["steps_per_epoch"], 3),
        "commands": [quant.text, verify.text, qat.text],
    }
    say(f"probe deploy {measured}: PTQ {quant_s:.0f} s, verify n={vrep['n']} {verify_s:.0f} s, "
        f"QAT {out['deploy'][measured]['qat_step_s']:.2f} s/step")
    out["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    atomic_write_text(REPO / cfg.results_dir / "probe.json", json.dumps(out, indent=1) + "\n")
    say(f"wrote {cfg.results_dir / 'probe.json'}")
    return 0


# ----------------------------------------------------------------------------------------------- table


def pct(values: Sequence[float]) -> str:
    """``mean ± std`` in percent over seeds (sample std); one value alone is marked with a dagger."""
    if not values:
        return "–"
    mean = 100 * statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.1f}†"
    return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}"


def cell(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample standard deviation and count of accuracies (table.json)."""
    return {"mean": statistics.fmean(values) if values else None,
            "std": statistics.stdev(values) if len(values) > 1 else None, "k": len(values)}


def attack_columns(cfg: Settings) -> list[str]:
    """The evaluation's attack names, in column order."""
    names = [a for a in cfg["eval"]["attacks"].split(",") if a]
    return [*names, cfg["eval"]["autoattack"]]


def label(name: str) -> str:
    """A column label for an attack name."""
    if name.startswith("cw"):
        return "CW-inf" if name == "cw" else f"CW-inf ({name})"
    return ATTACK_LABELS.get(name, name)


def row_stats(results: dict[int, dict[str, Any]], columns: list[str],
              want_n: dict[str, int] | None = None) -> dict[str, list[tuple[int, float]]]:
    """Per column, the (seed, accuracy) pairs of the finished seeds that evaluated it (on ``want_n[column]``
    images where given: an evaluation on another n, from an earlier comparison.yaml, is left out)."""
    out: dict[str, list[tuple[int, float]]] = {c: [] for c in columns}
    for seed, res in sorted(results.items()):
        for c in columns:
            got = res["eval"]["attacks"].get(c)
            if got is not None and (want_n is None or c not in want_n or got["n"] == want_n[c]):
                out[c].append((seed, got["acc"]))
    return out


def seeds_text(have: Sequence[int], want: Sequence[int]) -> str:
    """``0,1,2``, or ``0,1 (missing 2) ⚠`` for a row with missing seeds."""
    missing = [s for s in want if s not in have]
    text = ",".join(map(str, have)) or "none"
    return f"{text} (missing {','.join(map(str, missing))}) ⚠" if missing else text


def table_setup(cfg: Settings, results: dict[str, dict[str, Any]]) -> list[str]:
    """The setup paragraph: data, training, evaluation, how cells are computed."""
    recipe = cfg.recipe()
    train, data, ev = recipe["student"]["train"], recipe["data"], cfg["eval"]
    first = next((r for r in results.values() if r.get("eval")), None)
    n_text = f"the first {first['eval']['n']} {cfg['data']} test images" if first else f"n = {ev['n']}"
    return [
        "## Setup", "",
        f"- Data: {cfg['data']}, train subset {data.get('train_subset') or 'all'} images (seeded by the run seed), "
        f"batch {data['batch_size']}; teacher `{cfg['teacher']['checkpoint']}`.",
        f"- Training (every row of a student; a student's own settings are named under its table): "
        f"{train['epochs']} epochs, SGD lr {train['lr']} momentum 0.9, weight decay "
        f"{train['weight_decay']}, lr x0.1 at epochs {train.get('milestones')}; m = {cfg.steps} attack steps "
        f"(adv_path: m per branch), eps 8/255, step 2/255; recipe `{cfg['recipe']}` + `--set` overrides.",
        f"- Evaluation: {n_text}, L-inf eps 8/255, attack seed {ev['seed']}; columns "
        f"{', '.join(attack_columns(cfg))}; {label(ev['autoattack'])} only on seeds {ev['autoattack_seeds']} and on "
        f"the first n = {per_student_text(ev['autoattack_n'])} test images, the other columns on seeds "
        f"{list(cfg['seeds'])}.",
        "- Cells: mean ± sample standard deviation over seeds, in %; † = a single seed (no std). "
        "Per-seed values with 95% Wilson intervals are in the per-part section below and in table.json.", "",
    ]


def autoattack_n(cfg: Settings, student: str) -> dict[str, int]:
    """``want_n`` for row_stats: the AutoAttack column counts only evaluations on the student's configured n."""
    return {cfg["eval"]["autoattack"]: per_student(cfg["eval"]["autoattack_n"], student)}


def fewer_seeds(values: Sequence[tuple[int, float]], res: dict[int, dict[str, Any]]) -> str:
    """`` (seeds 0,1)`` after a cell computed over fewer seeds than its row has (nothing otherwise)."""
    if len(values) >= len(res) or len(values) < 2:  # a single seed is already marked with its dagger
        return ""
    return f" (seeds {','.join(str(s) for s, _ in values)})"


def table_row(name: str, res: dict[int, dict[str, Any]], want: list[int], columns: list[str],
              extra: str = "", want_n: dict[str, int] | None = None) -> tuple[str, dict[str, Any]]:
    """One Markdown row (mean ± std per column) and its table.json entry."""
    stats = row_stats(res, columns, want_n)
    entry = {"seeds": sorted(res), "missing_seeds": [s for s in want if s not in res],
             **{c: cell([v for _, v in stats[c]]) | {"per_seed": dict(stats[c])} for c in columns}}
    line = (f"| {name} |{extra} {seeds_text(sorted(res), want)} | "
            + " | ".join(pct([v for _, v in stats[c]]) + fewer_seeds(stats[c], res) for c in columns) + " |")
    return line, entry


def table_main(cfg: Settings, results: dict[str, dict[str, Any]], tj: dict[str, Any]) -> list[str]:
    """One table per student: a row per method, a column per attack."""
    columns, seeds, ev, pgd = attack_columns(cfg), list(cfg["seeds"]), cfg["eval"], pgd_attack(cfg)
    plan = {p.id: p for p in build_plan(cfg)}
    lines: list[str] = []
    for student, spec in cfg["students"].items():
        aa_n = per_student(ev["autoattack_n"], student)
        own = cfg.fill(spec.get("overrides") or [])
        lines += [f"## {student}: {spec['name']} width {spec['width']}", "",
                  *([f"Trained with base.yaml plus `{' '.join(own)}` (this student's own settings).", ""] if own else []),
                  "| method | seeds | " + " | ".join(label(c) for c in columns) + f" | {label(pgd)} without the "
                  "most-predicted class |", "|---|---|" + "---|" * (len(columns) + 1)]
        tj["main"][student] = {}
        collapsed: list[str] = []
        for method in cfg["methods"]:
            ids = {s: train_part_id(student, method, s) for s in seeds}
            res = {s: results[i] for s, i in ids.items() if i in results}
            warned = [f"- {ids[s]}: {w.split(' used on clean inputs)')[0]} used on clean inputs)"
                      for s, r in res.items() for w in r["eval"].get("warnings") or []]
            collapsed += warned
            line, tj["main"][student][method] = table_row(method + (" ⚠" if warned else ""), res, seeds, columns,
                                                          want_n=autoattack_n(cfg, student))
            tj["main"][student][method]["warnings"] = warned
            without = {s: r["eval"]["by_class"]["attacks"][pgd]["without_most_predicted"] for s, r in res.items()
                       if (r["eval"].get("by_class") or {}).get("attacks", {}).get(pgd)}
            tj["main"][student][method][f"{pgd}_without_most_predicted"] = cell(list(without.values())) | {
                "per_seed": without}
            line += f" {pct(list(without.values()))} |"
            lines.append(line)
        short = [f"{pid} ({what})" for m in cfg["methods"] for s in ev["autoattack_seeds"]
                 if (r := results.get(pid := train_part_id(student, m, s))) and (what := lacking(cfg, plan[pid], r))]
        lines += ["", f"{label(ev['autoattack'])}: seeds {ev['autoattack_seeds']}, n = {aa_n}"
                  + (f" (not {ev['n']}: the budget, see README.md)" if aa_n != int(ev["n"]) else "") + "."
                  + (f" Not in the column yet ⚠: {', '.join(short)}." if short else ""), ""]
        if collapsed:
            lines += ["⚠ `rkd eval` warnings: a model that ignores classes or favours one looks more robust than "
                      "it is (full text: `eval.warnings` in each part's JSON):", "",
                      *collapsed, ""]
    return lines


def paired_cells(ours: dict[int, dict[str, Any]], theirs: dict[int, dict[str, Any]], columns: list[str],
                 want_n: dict[str, int] | None, wins_key: str) -> tuple[dict[str, Any], list[str]]:
    """``ours`` minus ``theirs`` per column over the seeds both finished: the table.json entry and the Markdown
    cells (mean ± std of the differences in points, and in brackets the seeds where ``ours`` is higher)."""
    both = sorted(s for s in ours if s in theirs)
    entry: dict[str, Any] = {"seeds": both}
    cells = []
    for c in columns:
        a = dict(row_stats({s: ours[s] for s in both}, [c], want_n)[c])
        b = dict(row_stats({s: theirs[s] for s in both}, [c], want_n)[c])
        paired = [s for s in both if s in a and s in b]
        if not paired:
            cells.append("–")
            continue
        diffs = [a[s] - b[s] for s in paired]
        wins = sum(d > 0 for d in diffs)
        entry[c] = cell(diffs) | {"per_seed": dict(zip(paired, diffs, strict=True)), wins_key: wins}
        sign = "+" if statistics.fmean(diffs) >= 0 else ""
        cells.append(f"{sign}{pct(diffs)} ({wins}/{len(diffs)})")
    return entry, cells


def table_paired(cfg: Settings, results: dict[str, dict[str, Any]], tj: dict[str, Any]) -> list[str]:
    """adv_path minus each baseline, paired by seed (same data subset, initialisation seed and test images), per
    student: the mean difference, its sample std over seeds and how many seeds adv_path wins (AutoAttack over the
    seeds where both ran it on the configured n)."""
    columns = attack_columns(cfg)
    seeds, lines = list(cfg["seeds"]), []
    for student in cfg["students"]:
        want_n = autoattack_n(cfg, student)
        ours = {s: r for s in seeds if (r := results.get(train_part_id(student, "adv_path", s)))}
        rows, tj["paired"][student] = [], {}
        for method in cfg["methods"]:
            if method == "adv_path":
                continue
            theirs = {s: r for s in seeds if (r := results.get(train_part_id(student, method, s)))}
            entry, cells = paired_cells(ours, theirs, columns, want_n, "adv_path_wins")
            if not entry["seeds"]:
                continue
            tj["paired"][student][method] = entry
            rows.append(f"| {method} | {','.join(map(str, entry['seeds']))} | " + " | ".join(cells) + " |")
        if rows:
            lines += [f"### {student}: adv_path minus each baseline, paired by seed", "",
                      "Points of accuracy, mean ± std over the seeds both finished (same training subset, "
                      "initialisation seed and test images); in brackets, the seeds where adv_path is higher.", "",
                      "| baseline | seeds | " + " | ".join(label(c) for c in columns) + " |",
                      "|---|---|" + "---|" * len(columns), *rows, ""]
    return lines


def distill_seconds(res: dict[int, dict[str, Any]]) -> str:
    """Mean ``rkd distill`` wall seconds over the finished seeds trained in one sitting (a resumed part's
    recorded time is only its last segment's), with the seeds used when some were left out."""
    secs = {s: r["timing"]["distill_s"] for s, r in sorted(res.items())
            if (r.get("timing") or {}).get("distill_s") and (r.get("train") or {}).get("segments", 1) <= 1}
    if not secs:
        return "–"
    mean = f"{statistics.fmean(secs.values()):.0f}"
    return mean if len(secs) == len(res) else f"{mean} (seeds {','.join(map(str, secs))})"


def is_default_adv_path(cfg: Settings, student: str, items: Sequence[str]) -> bool:
    """Whether an ablation variant's overrides give the same validated recipe as the table's default adv_path row
    (base.yaml with ``method_overrides.adv_path``; the ``preset`` field itself aside: it names knobs, it is not
    one)."""
    from rkd.config import validate_recipe

    own = cfg.fill((cfg.raw.get("method_overrides") or {}).get("adv_path") or [])
    base = apply_overrides(cfg.recipe(), [*student_overrides(cfg, student), "student.method.name=adv_path", *own])
    dumps = []
    for raw in (base, apply_overrides(base, list(items))):
        dump = validate_recipe(raw).model_dump()
        dump["student"]["method"].pop("preset", None)
        dumps.append(dump)
    return dumps[0] == dumps[1]


def table_ablations(cfg: Settings, results: dict[str, dict[str, Any]], tj: dict[str, Any]) -> list[str]:
    """adv_path's default row (from the main parts), one row per ablation variant, and each variant minus the
    default, paired by seed."""
    abl, columns = cfg["ablations"], attack_columns(cfg)
    a_seeds, student = list(abl["seeds"]), abl["student"]
    a_cols = columns if any(ablation_autoattack(abl, v) for v in abl["variants"]) else columns[:-1]
    want_n = autoattack_n(cfg, student)
    fewer = "" if len(a_seeds) >= len(cfg["seeds"]) else ": fewer seeds than the main table"
    lines = [f"## Ablations of adv_path ({student}, seeds {a_seeds}{fewer})", "",
             "`distill s`: mean wall seconds of `rkd distill` over the seeds (one thread, two parts at a time on "
             "the 2-core machine: compare within this table, not as a benchmark; parts resumed after an "
             "interruption are left out, their time is split).", "",
             "| variant | overrides | seeds | " + " | ".join(label(c) for c in a_cols) + " | distill s |",
             "|---|---|---|" + "---|" * (len(a_cols) + 1)]
    variants: list[tuple[str, list[str], str | None]] = [("default", [], None)]
    variants += [(v, cfg.fill(items), v) for v, items in abl["variants"].items()]
    same = [v for v, items, _ in variants[1:] if is_default_adv_path(cfg, student, items)]
    if "adv_path" not in cfg["methods"]:  # no default parts planned: a variant that resolves to it stands for it
        variants = variants[1:]
        lines[-2:-2] = ["The default adv_path is not trained as a row of its own here; "
                        + (f"{', '.join(f'`{v}`' for v in same)} resolves to the same recipe as it "
                           f"(checked when this table was made): its row is the default's."
                           if same else "no variant resolves to it."), ""]
    elif same:
        lines[-2:-2] = [f"{', '.join(f'`{v}`' for v in same)} resolves to the same recipe as the default.", ""]
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    for name, items, variant in variants:
        ids = {s: train_part_id(student, "adv_path", s, variant) for s in a_seeds}
        over = ", ".join(f"`{i.removeprefix('student.method.')}`" for i in items) or "(base.yaml)"
        runs[name] = res = {s: results[i] for s, i in ids.items() if i in results}
        warned = any(r["eval"].get("warnings") for r in res.values())
        line, entry = table_row(name + (" ⚠" if warned else ""), res, a_seeds, a_cols, extra=f" {over} |",
                                want_n=want_n)
        tj["ablations"][name] = {"overrides": items, **entry}
        lines.append(line + f" {distill_seconds(res)} |")
    rows = []
    default, stand_in = ("default", "") if "default" in runs else (same[0], f" (`{same[0]}`)") if same else ("", "")
    for name, _, _ in [v for v in variants if v[0] not in ("default", default)] if default else []:
        entry, cells = paired_cells(runs[name], runs[default], a_cols, want_n, "variant_higher")
        if entry["seeds"]:
            tj["ablations"][name]["minus_default"] = entry
            rows.append(f"| {name} | {','.join(map(str, entry['seeds']))} | " + " | ".join(cells) + " |")
    if rows:
        lines += ["", f"### {student}: each variant minus the default{stand_in}, paired by seed", "",
                  "Points of accuracy, mean ± std over the seeds both finished; in brackets, the seeds where the "
                  "variant is higher.", "",
                  "| variant | seeds | " + " | ".join(label(c) for c in a_cols) + " |",
                  "|---|---|" + "---|" * len(a_cols), *rows]
    for method in abl.get("compare_to") or []:  # each variant against a baseline's main rows, paired by seed
        theirs = {s: r for s in a_seeds if (r := results.get(train_part_id(student, method, s)))}
        rows = []
        for name, _, _ in variants:
            entry, cells = paired_cells(runs[name], theirs, a_cols, want_n, "variant_higher")
            if entry["seeds"]:
                tj["ablations"][name][f"minus_{method}"] = entry
                rows.append(f"| {name} | {','.join(map(str, entry['seeds']))} | " + " | ".join(cells) + " |")
        if rows:
            lines += ["", f"### {student}: each variant minus {method}, paired by seed", "",
                      f"Points of accuracy, mean ± std over the seeds both finished; in brackets, the seeds where "
                      f"the variant is higher than {method}.", "",
                      "| variant | seeds | " + " | ".join(label(c) for c in a_cols) + " |",
                      "|---|---|" + "---|" * len(a_cols), *rows]
    return lines


def pct1(value: float) -> str:
    """An accuracy in percent with one decimal."""
    return f"{100 * value:.1f}"


def table_deploy(cfg: Settings, results: dict[str, dict[str, Any]], tj: dict[str, Any]) -> list[str]:
    """Per student: verify's float reference, the INT8 PTQ engine and the INT8 QAT engine."""
    dep = cfg["deploy"]
    attacks = dep["verify"]["attacks"].split(",")
    lines = ["", f"## Deployment: INT8 (ONNX Runtime, `rkd verify`) of each student's seed-{dep['seed']} "
             f"{dep['method']} model", "",
             f"`rkd verify --attacks {dep['verify']['attacks']}` on the first n = "
             f"{per_student_text(dep['verify']['n'])} test images: white-box attacks through the fake-quant "
             "surrogate's gradients, Square (AutoAttack's) on the engine itself, transfer from the float model; worst "
             "case = robust to all of them. verify runs AutoAttack only on images still robust after the attacks "
             "before it, so its column is cumulative. `float` is verify's float reference (model.onnx, attacked "
             "with its own gradients). Single seed: no std.", "",
             "| student | model | clean | " + " | ".join(label(a) for a in attacks)
             + " | transfer | worst case (95% CI) | warnings |", "|---|---|---|" + "---|" * (len(attacks) + 3)]
    for student in cfg["students"]:
        float_done = False
        for mode in ("ptq", "qat"):
            res = results.get(f"deploy-{student}-{mode}")
            if res is None:
                lines.append(f"| {student} | INT8 {mode.upper()} | not run ⚠ |" + " |" * (len(attacks) + 3))
                continue
            v = res["verify"]
            if not float_done and v.get("float"):
                f = v["float"]
                lines.append(f"| {student} | float | {pct1(f['clean_acc'])} | "
                             + " | ".join(pct1(f["attacks"][a]["acc"]) if a in f["attacks"] else "–" for a in attacks)
                             + f" | – | {pct1(f['worst_case']['acc'])} | – |")
                float_done = True
            wc, att = v["worst_case"], v["attacks"]
            transfer = pct1(att["transfer"]["acc"]) if "transfer" in att else "–"
            lines.append(f"| {student} | INT8 {mode.upper()} | {pct1(v['clean_acc'])} | "
                         + " | ".join(pct1(att[a]["acc"]) if a in att else "–" for a in attacks)
                         + f" | {transfer} | {pct1(wc['acc'])} ({pct1(wc['ci95'][0])}-{pct1(wc['ci95'][1])}) | "
                         f"{len(v.get('warnings') or [])} |")
            tj["deploy"][f"{student}-{mode}"] = {"verify": v, "quantize": res["quantize"]}
    warned = [f"- {key}: {w}" for key, block in tj["deploy"].items() for w in block["verify"].get("warnings") or []]
    return [*lines, "", "Warnings of the deployment rows (from `rkd verify`):", "", *(warned or ["- none"])]


def table_runs(cfg: Settings, plan: list[Part], results: dict[str, dict[str, Any]], tj: dict[str, Any]) -> list[str]:
    """Compute, machine, versions, missing parts, a consistency check, and every part's numbers and commands."""
    total_s = sum(r.get("timing", {}).get("total_s", 0.0) for r in results.values())
    machines = {json.dumps(r["machine"], sort_keys=True) for r in results.values()}
    versions = {json.dumps(r.get("versions"), sort_keys=True) for r in results.values() if r.get("versions")}
    missing = [p.id for p in plan if p.id not in results]
    incomplete = [f"{p.id} ({what})" for p in plan if p.id in results and (what := lacking(cfg, p, results[p.id]))]
    lines: list[str] = []
    trained = {pid: json.dumps({"data": r["recipe"]["data"], "train": r["recipe"]["train"],
                                "steps": r["recipe"]["method"].get("steps"),
                                "teacher": r["recipe"].get("teacher_sha256")}, sort_keys=True)
               for pid, r in results.items() if r.get("recipe") and r.get("group") == "main"}
    if len(set(trained.values())) > 1:  # base.yaml changed between parts: the rows are not comparable
        groups: dict[str, list[str]] = {}
        for pid, key in trained.items():
            groups.setdefault(key, []).append(pid)
        lines += ["", "**⚠ The main parts were trained with different data/training settings or teachers** (base.yaml "
                  "or the teacher changed between runs; delete the stale result JSONs and run again): "
                  + "; ".join(f"{len(v)} part(s) with {k}" for k, v in groups.items())]
    lines += ["", "## Runs", "",
              f"- Compute: {total_s / 3600:.2f} core-hours over {len(results)} part(s) (sum of the wall times of "
              "the commands that finished; time lost in killed commands is not counted).",
              f"- Machine: {'; '.join(machines) or '–'}", f"- Versions: {'; '.join(versions) or '–'}",
              f"- Missing parts ({len(missing)}): {', '.join(missing) or 'none'}",
              f"- Incomplete parts ({len(incomplete)}; `run` completes them): {', '.join(incomplete) or 'none'}", "",
              "<details><summary>Every part: accuracies (95% Wilson interval), time and commands</summary>", ""]
    for pid, res in results.items():
        tj["parts"][pid] = {k: res.get(k) for k in ("group", "student", "method", "variant", "seed", "deploy",
                                                    "commands", "timing", "peak_rss_mib")}
        minutes = res["timing"]["total_s"] / 60
        peak = max((res.get("peak_rss_mib") or {}).values(), default=None)  # recorded from 2026-12 on
        minutes_text = f"{minutes:.1f} min" + (f", peak RSS {peak / 1024:.1f} GiB" if peak else "")
        if res.get("eval"):
            n = res["eval"]["n"]
            accs = ", ".join(f"{k} {pct1(a['acc'])} ({pct1(a['ci95'][0])}-{pct1(a['ci95'][1])})"
                             + (f" on n={a['n']}" if a["n"] != n else "") for k, a in res["eval"]["attacks"].items())
            tj["parts"][pid]["eval"] = {k: {kk: a[kk] for kk in ("acc", "correct", "n", "ci95")}
                                        for k, a in res["eval"]["attacks"].items()}
            lines.append(f"- **{pid}** (n={n}, {minutes_text}): {accs}")
        else:
            lines.append(f"- **{pid}** ({minutes_text})")
        lines += [f"  - `{c}`" for c in res["commands"]]
    return [*lines, "", "</details>", ""]


def table(cfg: Settings) -> int:
    """Aggregate the finished parts into table.md and table.json."""
    plan = build_plan(cfg)
    results = {p.id: rec for p in plan if (rec := read_result(cfg, p.id)) is not None}
    tj: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "kind": "rkd-method-comparison-table",
                          "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"), "smoke": cfg.smoke,
                          "columns": attack_columns(cfg), "main": {}, "paired": {}, "ablations": {}, "deploy": {},
                          "parts": {}}
    lines = [f"# Method comparison{' (SMOKE TEST, synthetic data)' if cfg.smoke else ''}", "",
             f"Generated {tj['generated']} by `benchmarks/method_comparison/run.py table` from "
             f"{len(results)} of {len(plan)} part result(s) in `{cfg.results_dir}/`.", ""]
    lines += table_setup(cfg, results)
    lines += table_main(cfg, results, tj)
    lines += table_paired(cfg, results, tj)
    lines += table_ablations(cfg, results, tj)
    if cfg.raw.get("deploy"):
        lines += table_deploy(cfg, results, tj)
    lines += table_runs(cfg, plan, results, tj)
    out_dir = REPO / cfg.results_dir
    atomic_write_text(out_dir / "table.md", "\n".join(lines))
    atomic_write_text(out_dir / "table.json", json.dumps(tj, indent=1) + "\n")
    say(f"wrote {cfg.results_dir / 'table.md'} and table.json ({len(results)}/{len(plan)} parts)")
    return 0


# ----------------------------------------------------------------------------------------------- plan / main


def show_plan(cfg: Settings, jobs: int) -> int:
    """Print every part with its estimated minutes and whether it is done; totals and the wall estimate."""
    plan = build_plan(cfg)
    est = Estimator(cfg)
    minutes: dict[str, float] = {}
    unknown = []
    print(f"{'part':34} {'group':9} {'est. min':>8}  {'status':8} source")
    for part in plan:
        m, source = est.minutes(part)
        done = is_done(cfg, part)
        if m is None:
            unknown.append(part.id)
        elif not done:
            minutes[part.id] = m
        text = f"{m:8.1f}" if m is not None else f"{'?':>8}"
        extra = f" (after {', '.join(part.deps)})" if part.deps and not done else ""
        print(f"{part.id:34} {part.group:9} {text}  {'done' if done else 'todo':8} {source}{extra}")
    todo = [p for p in plan if not is_done(cfg, p)]
    teacher = REPO / cfg["teacher"]["checkpoint"]
    print(f"\nteacher: {cfg['teacher']['checkpoint']} "
          f"{'present' if teacher.exists() else 'MISSING: the teacher part trains it first'}")
    print(f"{len(plan)} parts, {len(plan) - len(todo)} done, {len(todo)} to run: "
          f"{sum(minutes.values()):.0f} core-minutes estimated"
          + (f" (+ {len(unknown)} without an estimate)" if unknown else ""))
    for j in sorted({1, jobs}):
        print(f"  wall time with --jobs {j}: about {makespan(todo, minutes, j):.0f} min")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="synthetic data, tiny settings, separate folders")
    ap.add_argument("--config", type=Path, default=CONFIG, help="settings file [comparison.yaml]")
    ap.add_argument("--data-root", help="replace the settings' data_root")
    sub = ap.add_subparsers(dest="command", required=True)
    p_plan = sub.add_parser("plan", help="list every part, its estimated cost, and which are done")
    p_plan.add_argument("--jobs", type=int, default=2, help="also estimate the wall time for this many jobs")
    p_plan.add_argument("--ids", action="store_true", help="print only the ids of the parts not done (for --part)")
    p_plan.add_argument("--student", help="with --ids: only this student's parts (deployment included)")
    p_plan.add_argument("--group", choices=["teacher", "main", "ablation", "deploy"], help="with --ids: one group")
    p_run = sub.add_parser("run", help="run the parts that are not done, in plan order")
    p_run.add_argument("--part", nargs="+", metavar="ID", help="only these parts (ids from `plan`)")
    p_run.add_argument("--jobs", type=int, default=1, help="parts at a time (one per core: 2 on a 2-core machine)")
    p_run.add_argument("--max-minutes", type=float, help="start no part after this many minutes")
    sub.add_parser("table", help="aggregate the result JSONs into table.md and table.json")
    sub.add_parser("probe", help="measure step, evaluation and deployment costs (writes probe.json)")
    args = ap.parse_args(argv)
    cfg = Settings.load(args.config, smoke=args.smoke, data_root=args.data_root)
    os.chdir(REPO)
    if args.command == "plan" and args.ids:
        print(" ".join(p.id for p in build_plan(cfg) if not is_done(cfg, p)
                       and (args.student is None or p.student == args.student)
                       and (args.group is None or p.group == args.group)))
        return 0
    if args.command == "plan":
        return show_plan(cfg, args.jobs)
    if args.command == "run":
        signal.signal(signal.SIGTERM, stop_children)
        signal.signal(signal.SIGINT, stop_children)
        plan = build_plan(cfg)
        if args.part:
            known = {p.id for p in plan}
            unknown = [p for p in args.part if p not in known]
            if unknown:
                ap.error(f"unknown part(s): {', '.join(unknown)} (see `run.py plan`)")
            plan = [p for p in plan if p.id in set(args.part)]
        try:
            return run_all(cfg, plan, jobs=max(1, args.jobs), max_minutes=args.max_minutes)
        except KeyboardInterrupt:
            say("interrupted: finished parts are kept; `run` again resumes the others")
            return 130
    if args.command == "table":
        return table(cfg)
    return probe(cfg)


if __name__ == "__main__":
    sys.exit(main())
