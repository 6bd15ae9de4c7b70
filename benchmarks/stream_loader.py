"""Streaming an image folder: can the loader keep up with the distillation step, and does its memory stay flat?

What it measures, in one run, on a generated folder of camera-sized images (``--source`` W x H, default 640x480,
``--png-share`` of them PNG, the rest JPEG at quality 90; smooth gradients, blobs and sensor noise, so files
have realistic sizes and decode costs):

1. ``throughput``: at each ``--sizes`` side (default 96 and 224), images per second of
   (a) ``loader``: :class:`rkd.data.StreamLoader` alone (RandomResizedCrop + flip, ``--workers`` DataLoader
       workers, batch ``--batch``), one epoch's batches after a warm-up batch (which starts the workers);
   (b) ``step``: one training step of rkd's default method (adv_path, its recipe settings eps 4/255, alpha 1/255,
       5 steps) with student ``tv_mobilenet_v2`` and teacher ``--teacher`` on a fixed in-memory batch;
   (c) ``fed``: the same step fed by the streaming loader (workers decode while the step computes, as in
       training). ``fed / step`` is what streaming costs the training loop on this machine.
   The three run interleaved in rounds (order reversed every other round) so background load hits them alike;
   reported: every raw time, median and min/max over rounds, and per-round ratios.
2. ``memory``: peak memory of iterating one epoch of the streaming loader (``--workers`` workers, 224 px) over
   folders of each ``--folder-sizes`` (default 500 and 4000 images), each in a fresh subprocess; sampled every
   20 ms over the process and its workers: the sum of RSS (counts pages shared after fork once per process,
   an upper bound) and the sum of PSS (shared pages split between processes; the honest total).

Run (the machine's cores are shared, so pin the training step to one thread: with two threads on two loaded
cores, OpenMP's barriers made the step 25x slower in a first attempt)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/stream_loader.py \
        --out benchmarks/results/stream_loader-cpu.json

It writes the JSON (machine, torch version, threads, date, command, raw numbers) and a Markdown summary beside
it (same name, ``.md``). Models are untrained and labels random: a step's cost depends on neither.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rkd.environment import cpu_description

REPO_ROOT = Path(__file__).resolve().parents[1]


def make_folder(root: Path, n: int, *, classes: int, source: tuple[int, int], png_share: float, seed: int,
                distinct: int = 200) -> Path:
    """``root/train/cNN/*.{jpg,png}``: ``n`` images spread over ``classes`` classes, camera-like content
    (``distinct`` different pictures, each written flipped or shifted into several files: decoding costs the
    same, generating costs less)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = source
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    pool = []
    for _ in range(min(n, distinct)):
        base = rng.uniform(40, 200, 3).astype(np.float32)
        gx, gy = rng.uniform(-0.15, 0.15, 2)
        img = base + (gx * xx + gy * yy)[..., None]
        for _ in range(4):
            cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(20, h / 3)
            mask = ((xx - cx) ** 2 + (yy - cy) ** 2) < r * r
            img[mask] = rng.uniform(0, 255, 3)
        img += rng.normal(0, 6, img.shape).astype(np.float32)
        pool.append(np.clip(img, 0, 255).astype(np.uint8))
    for i in range(n):
        folder = root / "train" / f"c{i % classes:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.roll(pool[i % len(pool)], int(rng.integers(0, w)), axis=1)
        if rng.random() < 0.5:
            pixels = pixels[:, ::-1]
        if rng.random() < png_share:
            Image.fromarray(np.ascontiguousarray(pixels)).save(folder / f"{i:05d}.png")
        else:
            Image.fromarray(np.ascontiguousarray(pixels)).save(folder / f"{i:05d}.jpg", quality=90)
    return root


def link_subset(src: Path, dst: Path, n: int) -> Path:
    """The first ``n`` files of ``src`` (in scan order), hard-linked into ``dst`` with the same layout."""
    from rkd.data.imagefolder import scan_image_folder

    samples, _ = scan_image_folder(src, "train")
    picked = sorted(samples, key=lambda s: s[0].name)[:n]
    for file, _ in picked:
        out = dst / "train" / file.parent.name / file.name
        out.parent.mkdir(parents=True, exist_ok=True)
        os.link(file, out)
    return dst


# ---- throughput ---------------------------------------------------------------------------------------------


def build_step(size: int, teacher_name: str, batch: int, classes: int, seed: int) -> tuple[Any, Any]:
    from pydantic import TypeAdapter

    from rkd.config import DistillMethodConfig, TrainConfig
    from rkd.distill import create_method
    from rkd.models import create_model
    from rkd.train.schedule import build_optimizer

    torch.manual_seed(seed)
    student = create_model("tv_mobilenet_v2", num_classes=classes).to(memory_format=torch.channels_last)
    teacher = create_model(teacher_name, num_classes=classes).to(memory_format=torch.channels_last).eval()
    config = TypeAdapter(DistillMethodConfig).validate_python(
        {"name": "adv_path", "eps": 4 / 255, "alpha": 1 / 255, "steps": 5})
    method = create_method(config, student=student, teacher=teacher)
    method.train()
    optimizer = build_optimizer(method.trainable_parameters(), TrainConfig.model_validate({}))
    return method, optimizer


def train_step(method: Any, optimizer: Any, x: torch.Tensor, y: torch.Tensor) -> None:
    out = method(x, y)
    if not out.backward_done:
        optimizer.zero_grad(set_to_none=True)
        out.loss.float().backward()
    optimizer.step()


def measure_throughput(folder: Path, size: int, args: argparse.Namespace) -> dict[str, Any]:
    from rkd.data import FolderImages, StreamLoader

    data = FolderImages.scan(folder, "train", image_size=size, num_workers=args.workers)
    classes = data.num_classes
    method, optimizer = build_step(size, args.teacher, args.batch, classes, args.seed)
    g = torch.Generator().manual_seed(args.seed)
    x = torch.rand(args.batch, 3, size, size, generator=g).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (args.batch,), generator=g)
    epoch = [0]

    def loader(steps: int) -> StreamLoader:
        loader = StreamLoader(data, batch_size=args.batch, seed=args.seed, channels_last=True)
        loader.set_epoch(epoch[0])
        epoch[0] += 1
        return loader

    def run_loader() -> tuple[float, int]:
        it = iter(loader(args.loader_batches))
        next(it)  # starts the workers
        t0 = time.perf_counter()
        n = 0
        for i, (xb, _) in enumerate(it):
            n += len(xb)
            if i + 1 >= args.loader_batches:
                break
        return time.perf_counter() - t0, n

    def run_step() -> tuple[float, int]:
        t0 = time.perf_counter()
        for _ in range(args.steps):
            train_step(method, optimizer, x, y)
        return time.perf_counter() - t0, args.steps * args.batch

    def run_fed() -> tuple[float, int]:
        it = iter(loader(args.steps + 1))
        xb, yb = next(it)  # starts the workers; the first batch is not timed
        t0 = time.perf_counter()
        n = 0
        for i, (xb, yb) in enumerate(it):
            train_step(method, optimizer, xb, yb)
            n += len(xb)
            if i + 1 >= args.steps:
                break
        return time.perf_counter() - t0, n

    variants = {"loader": run_loader, "step": run_step, "fed": run_fed}
    train_step(method, optimizer, x, y)  # warm-up
    rounds: list[dict[str, dict[str, float]]] = []
    for r in range(args.repeats):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        times: dict[str, dict[str, float]] = {}
        for name in order:
            seconds, n = variants[name]()
            times[name] = {"seconds": seconds, "images": n, "images_per_s": n / seconds}
        rounds.append(times)
        print(f"  {size}px round {r}: " + ", ".join(f"{k} {v['images_per_s']:.1f} img/s" for k, v in times.items()),
              flush=True)
    summary: dict[str, Any] = {}
    for name in variants:
        ips = [t[name]["images_per_s"] for t in rounds]
        summary[name] = {"median": statistics.median(ips), "min": min(ips), "max": max(ips)}
    ratios = {}
    for num, den in (("loader", "step"), ("fed", "step")):
        per_round = [t[num]["images_per_s"] / t[den]["images_per_s"] for t in rounds]
        ratios[f"{num}/{den}"] = {"median": statistics.median(per_round), "min": min(per_round),
                                  "max": max(per_round), "per_round": per_round}
    return {"size": size, "classes": classes, "folder_images": len(data), "rounds": rounds, "images_per_s": summary,
            "ratios": ratios}


# ---- memory -------------------------------------------------------------------------------------------------


def _tree(pid: int) -> list[int]:
    out = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    for child in children:
        out += _tree(int(child))
    return out


def _kib(pid: int, file: str, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def memory_child(folder: str, size: int, batch: int, workers: int, seed: int) -> None:
    """Run in a subprocess: one epoch of the streaming loader, sampling the memory of the process tree."""
    from rkd.data import FolderImages, StreamLoader

    pid = os.getpid()
    peak: dict[str, Any] = {"rss_kib": 0, "pss_kib": 0, "processes": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            pids = _tree(pid)
            rss = sum(_kib(p, "status", "VmRSS:") for p in pids)
            pss = sum(_kib(p, "smaps_rollup", "Pss:") for p in pids)
            peak["rss_kib"] = max(peak["rss_kib"], rss)
            if pss > peak["pss_kib"]:
                peak["pss_kib"], peak["pss_at_s"] = pss, round(time.perf_counter() - t0, 2)
                peak["pss_by_process_kib"] = [_kib(p, "smaps_rollup", "Pss:") for p in pids]
            peak["processes"] = max(peak["processes"], len(pids))
            time.sleep(0.02)

    data = FolderImages.scan(folder, "train", image_size=size, num_workers=workers)
    before = _kib(pid, "status", "VmRSS:")
    t0 = time.perf_counter()
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    n = 0
    for xb, _ in StreamLoader(data, batch_size=batch, seed=seed):
        n += len(xb)
    seconds = time.perf_counter() - t0
    stop.set()
    thread.join()
    print(json.dumps({"images": n, "folder_images": len(data), "seconds": seconds, "main_rss_before_kib": before,
                      "peak_sum_rss_kib": peak["rss_kib"], "peak_sum_pss_kib": peak["pss_kib"],
                      "max_processes": peak["processes"], "peak_pss_at_s": peak.get("pss_at_s"),
                      "peak_pss_by_process_kib": peak.get("pss_by_process_kib")}))


def measure_memory(folder: Path, size: int, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--memory-child", str(folder), "--child-size", str(size),
           "--batch", str(args.batch), "--workers", str(args.workers), "--seed", str(args.seed)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", "")})
    return json.loads(res.stdout.strip().splitlines()[-1])


# ---- report -------------------------------------------------------------------------------------------------


def markdown(rep: dict[str, Any]) -> str:
    a = rep["args"]
    lines = [
        "# Streaming image-folder loader vs the distillation step (CPU)",
        "",
        f"Command: `{rep['command']}`; {rep['date']}; {rep['machine']['cpu_model']} ({rep['machine']['cpu_count']} "
        f"cores), torch {rep['torch']}, {rep['threads']} torch thread(s). The machine was shared with other jobs "
        "(load average at start "
        f"{rep['loadavg_start']}): absolute rates are under load; the per-round ratios, measured interleaved, "
        "are what count.",
        "",
        f"Data: a generated folder of {a['images']} images at {a['source'][0]}x{a['source'][1]} "
        f"({a['png_share']:.0%} PNG, the rest JPEG q90), {a['classes']} classes, seed {a['seed']}. Loader: "
        f"StreamLoader, RandomResizedCrop + flip, {a['workers']} workers, batch {a['batch']}. Step: adv_path "
        f"(eps 4/255, alpha 1/255, 5 steps), student tv_mobilenet_v2, teacher {a['teacher']}, batch {a['batch']}, "
        f"channels_last. {a['repeats']} rounds; loader: {a['loader_batches']} batches per round, step and fed: "
        f"{a['steps']} steps per round.",
    ]
    if rep["throughput"]:
        lines += ["", "| side | loader img/s | step img/s | step fed by loader img/s | loader/step | fed/step |",
                  "|---:|---:|---:|---:|---:|---:|"]
    for t in rep["throughput"]:
        s, r = t["images_per_s"], t["ratios"]

        def cell(d: dict[str, float], fmt: str = ".1f") -> str:
            return f"{d['median']:{fmt}} ({d['min']:{fmt}}-{d['max']:{fmt}})"

        lines.append(f"| {t['size']} | {cell(s['loader'])} | {cell(s['step'])} | {cell(s['fed'])} | "
                     f"{cell(r['loader/step'], '.2f')} | {cell(r['fed/step'], '.2f')} |")
    if rep["throughput"]:
        lines += ["", "Median (min-max) over rounds; ratios per round."]
    if not rep["memory"]:
        return "\n".join([*lines, ""])
    lines += ["",
              f"## Peak memory of one epoch at {a['memory_size']} px ({a['workers']} workers, batch {a['batch']})",
              "", "| folder images | epoch s (median) | peak sum PSS MiB | peak sum RSS MiB | processes |",
              "|---:|---:|---:|---:|---:|"]

    def mib(d: dict[str, float]) -> str:
        return f"{d['median'] / 1024:.0f} ({d['min'] / 1024:.0f}-{d['max'] / 1024:.0f})"

    for m in rep["memory"]:
        lines.append(f"| {m['folder_images']} | {m['seconds']:.1f} | {mib(m['peak_sum_pss_kib'])} | "
                     f"{mib(m['peak_sum_rss_kib'])} | {m['max_processes']} |")
    lines += ["", "PSS splits pages shared after fork between the processes (the real total); RSS counts them in "
              f"every process (an upper bound). Median (min-max) of {a['memory_repeats']} runs per folder size, "
              "each in a fresh process, sizes alternating, sampled every 20 ms.", ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks/results/stream_loader-cpu.json")
    p.add_argument("--sizes", default="96,224")
    p.add_argument("--source", default="640x480")
    p.add_argument("--png-share", type=float, default=0.2)
    p.add_argument("--images", type=int, default=4000)
    p.add_argument("--folder-sizes", default="500,4000")
    p.add_argument("--memory-size", type=int, default=224)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--teacher", default="tv_resnet18")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--loader-batches", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--memory-repeats", type=int, default=3, help="Runs per folder size (sizes alternate).")
    p.add_argument("--parts", default="throughput,memory", help="What to measure: throughput, memory or both.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", type=Path, default=None, help="Folder to generate the images in (default: a temp dir).")
    p.add_argument("--folder", type=Path, default=None, help="Use this folder of --images images (ROOT/train/CLASS/) "
                   "made by an earlier run instead of generating one.")
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-size", type=int, default=224, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.child_size, args.batch, args.workers, args.seed)
        return
    source = tuple(int(v) for v in args.source.lower().split("x"))
    folder_sizes = [int(v) for v in args.folder_sizes.split(",")]
    loadavg = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="rkd-stream-bench-", dir=args.data) as tmp:
        big = Path(tmp) / f"n{args.images}"
        t0 = time.perf_counter()
        if args.folder is not None:
            big = args.folder
        else:
            make_folder(big, args.images, classes=args.classes, source=source, png_share=args.png_share,
                        seed=args.seed)
            print(f"generated {args.images} images in {time.perf_counter() - t0:.0f} s", flush=True)
        disk = sum(f.stat().st_size for f in big.rglob("*") if f.is_file())
        parts = {v.strip() for v in args.parts.split(",")}
        throughput = []
        if "throughput" in parts:
            for size in (int(v) for v in args.sizes.split(",")):
                throughput.append(measure_throughput(big, size, args))
        memory: list[dict[str, Any]] = []
        if "memory" in parts:
            folders = {n: big if n == args.images else link_subset(big, Path(tmp) / f"n{n}", n)
                       for n in folder_sizes}
            runs: dict[int, list[dict[str, Any]]] = {n: [] for n in folder_sizes}
            for r in range(args.memory_repeats):
                for n in folder_sizes if r % 2 == 0 else list(reversed(folder_sizes)):
                    runs[n].append(measure_memory(folders[n], args.memory_size, args))
                    print(f"  memory {n} images, run {r}: {runs[n][-1]}", flush=True)
            for n in folder_sizes:
                pss = [m["peak_sum_pss_kib"] for m in runs[n]]
                rss = [m["peak_sum_rss_kib"] for m in runs[n]]
                memory.append({"folder_images": n, "runs": runs[n],
                               "peak_sum_pss_kib": {"median": statistics.median(pss), "min": min(pss),
                                                    "max": max(pss)},
                               "peak_sum_rss_kib": {"median": statistics.median(rss), "min": min(rss),
                                                    "max": max(rss)},
                               "seconds": statistics.median(m["seconds"] for m in runs[n]),
                               "max_processes": max(m["max_processes"] for m in runs[n])})
    cpu = cpu_description()
    rep = {
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {"cpu_model": cpu.get("cpu"), "cpu_count": os.cpu_count(), "platform": platform.platform()},
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "loadavg_start": [round(v, 2) for v in loadavg],
        "args": {**{k: v for k, v in vars(args).items() if k not in ("out", "data", "folder", "memory_child",
                                                                "child_size")},
                 "source": list(source), "disk_bytes": disk},
        "throughput": throughput, "memory": memory,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rep, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(rep))
    print(markdown(rep))


if __name__ == "__main__":
    main()
