#!/usr/bin/env python3
"""rkd's CUDA path measured by one command, in a few minutes on one GPU, written as JSON + Markdown.

What it runs, each section with a deadline (a section out of time is recorded as ``skipped: time``; the whole
script stops itself at ``--budget`` seconds and still writes its report):

1. ``cuda_tests``: ``pytest -m cuda tests`` (``tests/gpu/test_cuda.py``, ``tests/gpu/test_cuda_areas.py``: every
   distillation method's step, adv_path's one-pass alignment against chunked and ``low_memory``, PGD/FGSM/CW and
   an AutoAttack subset, ``rkd verify`` with the torch runtime, ONNX export from a model on the GPU; and the
   other ``cuda``-marked tests), with each test's outcome and time.
2. ``distill_step``: one training step (attack, forward, backward, SGD step, student in train mode, as
   ``rkd.train.loop`` runs it) of adv_path, RSLAD and ARD for a ResNet-18 and a MobileNetV2 student (full width), a
   WideResNet-34-10 teacher, batch 128, m = 10: fp32 and bf16 autocast; adv_path as the ``reconstruction``
   preset and as the candidate variant (branch U only, RSLAD's KL ascent, linear weights summed, clean-teacher
   target); adv_path's one-pass alignment against chunks of B, chunks of 1024 (the paper recipe's
   ``max_batch``) and ``low_memory``; the research-code-style reference steps of adv_path, RSLAD and ARD
   (``_step.ReferenceAdvPath``, ``_reference.RsladReference``, ``_reference.ArdReference``, as
   ``reference_step.py`` / ``distill_step.py`` time them; fp32 eager NCHW) in the same rounds, for the speed
   ratio; with ``--published-rslad DIR`` (a zibojia/RSLAD checkout) and ``--published-ard DIR`` (a
   goldblum/AdversariallyRobustDistillation checkout) also the published RSLAD and ARD steps themselves
   (``_reference.PublishedRslad``, ``_reference.PublishedArd``), so the same rounds give rkd / published and
   reference / published. Images/s, GFLOP per step and GFLOP/s (each variant's FLOPs counted once, on an
   untimed step after its warm-up, by ``_step.count_flops``: ``torch.utils.flop_counter``'s formulas, a grouped
   convolution's weight gradient per group), and peak memory
   (``torch.cuda.max_memory_allocated`` during the step, and its growth over the memory held before it).
   Variants of one student run interleaved, in an order reversed every other round; median [min, max] over
   rounds. ``distill_step_compiled`` (run last, with whatever time is left): the same with the compiled attack
   (``train.compile_attack``), each paired with its eager twin in its own rounds; the first call's time
   (compiling) is reported apart.
3. ``sanity_run``: ``rkd distill recipes/cifar10-resnet18.yaml`` for 2 short epochs on the GPU from the committed
   small teacher (``benchmarks/results/method_comparison/teacher``: ResNet-18 width 0.25), adv_path knobs set
   explicitly to the ``reconstruction`` preset; the step rate, the evaluation time, and the paper-scale
   recipe's wall time projected from section 2's step time with the WRN-34-10 teacher (the recipe's settings:
   bf16 autocast, alignment in chunks of 1024, eager attack) plus its periodic evaluations.
4. ``export_verify``: ``rkd export`` of the sanity run's student (ONNX bundle with its torch/ONNX Runtime parity
   check), then ``rkd verify`` of its checkpoint with the torch runtime on the GPU (PGD-20 and an AutoAttack
   subset, APGD-CE + APGD-T).
5. ``environment``: machine, GPU, driver, versions, and which Python packages beyond torch are present.

Data are synthetic (``data.dataset=synthetic``, ``rkd.data.synthetic``): a GPU machine may have no CIFAR-10 and
no network. The step benchmark uses untrained models from rkd's registry (a step's cost depends on neither the
weights nor the pixels); there is no committed WRN-34-10 teacher.

Run on a GPU machine (``make gpu-check``; 266 s on one H200 before the ARD variants and the FLOP counts were
added, ``results/gpu_check/gpu_check.md``)::

    python3 benchmarks/gpu_check.py --out benchmarks/results/gpu_check \
        --published-rslad build/published/rslad --published-ard build/published/ard

The two checkouts of the published code are not part of this project. Get them where there is a network
(``make published-code`` runs these) and copy ``build/published`` to the GPU machine with the repository::

    git clone https://github.com/zibojia/RSLAD build/published/rslad
    git clone https://github.com/goldblum/AdversariallyRobustDistillation build/published/ard

``make gpu-check`` passes each of them it finds there; without one, its published step is left out.

Packages beyond torch: ``--needs`` lists them and which are missing here; on a machine with an index,
``--fetch-wheels build/gpu-wheels`` downloads them as wheels for the GPU machine's Python (``--python-version``);
there, ``--wheels build/gpu-wheels`` installs them with ``pip --no-index`` into a temporary folder before
anything else is imported. ``--dry-run`` runs the same code paths at toy sizes on the CPU in about a minute
(``tests/integration/test_gpu_check.py`` runs it).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import datetime as dt
import gc
import glob
import importlib
import importlib.metadata
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO / "benchmarks"
RECIPE = REPO / "recipes" / "cifar10-resnet18.yaml"
SMALL_TEACHER = REPO / "benchmarks" / "results" / "method_comparison" / "teacher" / "model.safetensors"
CIFAR10_TRAIN = 50_000  # images in CIFAR-10's training split (the paper recipe's data)
REPORT_NAME = "gpu_check"

# What rkd needs beyond torch (pyproject's dependencies and the test tools), as (distribution, module).
NEEDS: tuple[tuple[str, str], ...] = (
    ("torchvision", "torchvision"), ("numpy", "numpy"), ("typer", "typer"), ("rich", "rich"),
    ("pydantic", "pydantic"), ("pydantic-core", "pydantic_core"), ("annotated-types", "annotated_types"),
    ("typing-inspection", "typing_inspection"), ("typing-extensions", "typing_extensions"),
    ("pyyaml", "yaml"), ("safetensors", "safetensors"), ("onnx", "onnx"), ("onnxruntime", "onnxruntime"),
    ("pyautoattack", "pyautoattack"), ("matplotlib", "matplotlib"), ("shellingham", "shellingham"),
    ("annotated-doc", "annotated_doc"), ("pytest", "pytest"),
)
# Brought as wheels by default: what a bare CUDA image with torch may lack (pydantic and its parts, AutoAttack),
# or hold in a version rkd's CLI was not written against (typer; typing-extensions for pydantic).
WHEELS = ("pydantic", "pydantic-core", "annotated-types", "typing-inspection", "typing-extensions", "typer",
          "pyautoattack")
WHEEL_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                   "manylinux2014_x86_64", "manylinux1_x86_64")
SLIM_OVER_BYTES = 1 << 20  # files in a wheel's examples/ folder larger than this are left out (pyautoattack: 45 MB)

# adv_path's variants, every knob that defines them set explicitly (a default changed later moves neither)
RECONSTRUCTION = {"preset": "reconstruction", "gamma": 1.0, "step_loss": "ce", "aggregate": "mean",
                  "weights": "prob_change", "align_target": "same_point"}
CANDIDATE = {"preset": "reconstruction", "gamma": 0.0, "step_loss": "kl", "aggregate": "sum",
             "weights": "linear", "align_target": "clean"}
RECIPE_MAX_BATCH = 1024  # recipes/cifar10-resnet18.yaml's student.method.max_batch
FLOPS_NOTE = ("GFLOP/step: torch.utils.flop_counter's formulas summed over one step of the variant (_step.count_flops: "
              "convolutions and matrix products, forward and backward, 2 FLOPs per multiply-add; a grouped "
              "convolution's weight gradient counted per group), on one untimed step after the warm-up; GFLOP/s: "
              "that count over each round's time")


# ---- sizes ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Arch:
    """A registered architecture and its knobs (``rkd.models.create_model``); duck-types ``ModelChoice``."""

    name: str
    knobs: tuple[tuple[str, Any], ...] = ()

    def build(self, num_classes: int) -> Any:
        from rkd.models import create_model

        return create_model(self.name, num_classes=num_classes, **dict(self.knobs))

    def label(self, model: Any = None) -> str:
        knobs = dict(self.knobs)
        spec = getattr(model, "spec", None)
        for knob in ("width", "depth", "widen_factor"):
            value = getattr(spec, knob, None)
            if value is not None and knob not in knobs and (knob != "width" or value != 1.0):
                knobs[knob] = value
        return " ".join([self.name, *(f"{k} {v:g}" for k, v in knobs.items())])


@dataclass(frozen=True)
class Sizes:
    """Everything that differs between the full check and the dry run."""

    device: str
    students: tuple[Arch, ...]
    teacher: Arch
    batch: int
    steps: int
    rounds: int
    warmup: int
    compile_backend: str  # "inductor": rkd.attacks.compile_attack_model; "eager": dynamo tracing only (dry run)
    compile_reserve_s: float  # time a compile is allowed to need; not started with less left
    pytest_args: tuple[str, ...]
    pytest_env: tuple[tuple[str, str], ...]
    sanity_sets: tuple[str, ...]
    sanity_epochs: int
    verify_n: int
    verify_attacks: str
    parity_n: int
    # section deadlines, seconds from the start; the rest of the budget goes to the compiled attack
    deadlines: tuple[tuple[str, float], ...]
    budget_s: float


def full_sizes(budget: float) -> Sizes:
    batch, steps, holdout, steps_per_epoch = 128, 10, 512, 40
    return Sizes(
        device="cuda",
        students=(Arch("resnet18"), Arch("mobilenet_v2")),
        teacher=Arch("wide_resnet", (("depth", 34), ("widen_factor", 10))),
        batch=batch, steps=steps, rounds=3, warmup=1,
        compile_backend="inductor", compile_reserve_s=45.0,
        pytest_args=("-m", "cuda", "tests"), pytest_env=(),
        sanity_sets=(f"data.synthetic_n={batch * steps_per_epoch + holdout}", f"data.holdout={holdout}",
                     f"data.batch_size={batch}", f"student.method.steps={steps}",
                     f"student.train.eval_n={holdout}", "student.train.eval_every=1",
                     "student.train.eval_pgd_steps=20", "student.train.log_every=10"),
        sanity_epochs=2, verify_n=500, verify_attacks="pgd20,aa-custom:apgd-ce+apgd-t", parity_n=256,
        deadlines=(("cuda_tests", 0.24), ("distill_step", 0.55), ("sanity_run", 0.68), ("export_verify", 0.77)),
        budget_s=budget,
    )


def dry_sizes(budget: float) -> Sizes:
    return Sizes(
        device="cpu",
        students=(Arch("resnet18", (("width", 0.0625),)), Arch("mobilenet_v2", (("width", 0.25),))),
        teacher=Arch("wide_resnet", (("depth", 10), ("widen_factor", 1))),
        batch=4, steps=2, rounds=2, warmup=1,
        compile_backend="eager", compile_reserve_s=3.0,
        # the GPU tests themselves, run on the CPU (RKD_CUDA_TEST_DEVICE=cpu drops their cuda marker)
        pytest_args=("tests/gpu/test_cuda_areas.py", "-k", "not autoattack"),
        pytest_env=(("RKD_CUDA_TEST_DEVICE", "cpu"),),
        sanity_sets=("data.synthetic_n=80", "data.holdout=16", "data.batch_size=8", "student.model.width=0.0625",
                     "student.method.steps=2", "student.train.eval_n=16", "student.train.eval_every=1",
                     "student.train.eval_pgd_steps=2", "student.train.log_every=2"),
        sanity_epochs=2, verify_n=16, verify_attacks="pgd20,aa-custom:apgd-ce", parity_n=16,
        deadlines=(("cuda_tests", 0.3), ("distill_step", 0.55), ("sanity_run", 0.7), ("export_verify", 0.85)),
        budget_s=budget,
    )


# ---- the report and its log ----------------------------------------------------------------------------------


class Report:
    """The JSON report, written (with its Markdown) after every section and by the watchdog at the deadline."""

    def __init__(self, out: Path, data: dict[str, Any]) -> None:
        self.out, self.data = out, data
        self.lock = threading.RLock()
        out.mkdir(parents=True, exist_ok=True)
        self.log_file = (out / f"{REPORT_NAME}.log").open("a", buffering=1)
        self.t0 = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def log(self, msg: str) -> None:
        line = f"[{self.elapsed():7.1f}s] {msg}"
        print(line, flush=True)
        with self.lock:
            self.log_file.write(line + "\n")

    def raw(self, text: str) -> None:
        with self.lock:
            self.log_file.write(text)

    def write(self) -> None:
        with self.lock:
            self.data["elapsed_s"] = round(self.elapsed(), 1)
            text = json.dumps(self.data, indent=1, default=str)
            try:
                md = markdown(self.data)
            except Exception as e:  # the Markdown must never cost the JSON
                md = f"# rkd GPU check\n\nMarkdown failed: {type(e).__name__}: {e}\n"
            for name, body in ((f"{REPORT_NAME}.json", text + "\n"), (f"{REPORT_NAME}.md", md)):
                tmp = self.out / f".{name}.tmp"
                tmp.write_text(body)
                os.replace(tmp, self.out / name)


# ---- helpers ---------------------------------------------------------------------------------------------------


def spread(values: Sequence[float]) -> dict[str, Any] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values),
            "raw": list(values)}


def paired(num: Sequence[float], den: Sequence[float]) -> dict[str, Any] | None:
    """Per-round ratios num[i] / den[i] over the rounds both took part in."""
    n = min(len(num), len(den))
    return spread([num[i] / den[i] for i in range(n)]) if n else None


class Subprocesses:
    """The child processes started here (each in its own session), so the watchdog can end them by id."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen[str]] = []

    def kill_all(self) -> None:
        for p in list(self.running):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)


CHILDREN = Subprocesses()


def run_cmd(report: Report, cmd: Sequence[str], timeout: float, *, env: dict[str, str] | None = None,
            cwd: Path = REPO) -> dict[str, Any]:
    """Run ``cmd``, its output streamed into the log; killed (its whole process group) after ``timeout`` s."""
    shown = shlex.join([str(c) for c in cmd])
    report.log(f"$ {shown}  (timeout {timeout:.0f} s)")
    report.raw(f"----- begin: {shown}\n")
    start = time.monotonic()
    p = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         cwd=cwd, env=env, start_new_session=True, errors="replace")
    CHILDREN.running.append(p)
    lines: list[str] = []

    def pump() -> None:
        assert p.stdout is not None
        for line in p.stdout:
            lines.append(line)
            report.raw(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    try:
        p.wait(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        timed_out = True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    reader.join(timeout=10)
    CHILDREN.running.remove(p)
    seconds = time.monotonic() - start
    report.raw(f"----- end: rc {p.returncode}, {seconds:.1f} s{', TIMED OUT' if timed_out else ''}\n")
    tail = "".join(lines)[-2500:]
    return {"command": shown, "rc": p.returncode, "seconds": round(seconds, 2), "timed_out": timed_out,
            "output_tail": tail}


def child_env(extra: Sequence[tuple[str, str]] = ()) -> dict[str, str]:
    env = dict(os.environ)
    parts = [str(REPO / "toolchain"), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("COLUMNS", "160")
    env.update(dict(extra))
    return env


# ---- packages: list, fetch, install ----------------------------------------------------------------------------


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for dist, _module in NEEDS:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def slim_wheel(path: Path, over: int = SLIM_OVER_BYTES) -> list[str]:
    """Rewrite the wheel at ``path`` without files over ``over`` bytes in an ``examples/`` folder (and their
    RECORD lines); returns what was left out. pyautoattack 0.2.0 ships 45 MB of example weights."""
    with zipfile.ZipFile(path) as z:
        infos = z.infolist()
        drop = {i.filename for i in infos if "/examples/" in f"/{i.filename}" and i.file_size > over}
        if not drop:
            return []
        tmp = path.with_suffix(".tmp")
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as w:
            for info in infos:
                if info.filename in drop:
                    continue
                data = z.read(info)
                if info.filename.endswith(".dist-info/RECORD"):
                    lines = data.decode().splitlines(keepends=True)
                    data = "".join(ln for ln in lines if ln.split(",", 1)[0] not in drop).encode()
                w.writestr(info, data)
    os.replace(tmp, path)
    return sorted(drop)


def fetch_wheels(dest: Path, names: Sequence[str], python_version: str) -> None:
    """Download ``names`` (pinned to this environment's versions where installed) as wheels for CPython
    ``python_version`` on x86-64 Linux, without their dependencies, into ``dest``; slim pyautoattack."""
    dest.mkdir(parents=True, exist_ok=True)
    have = package_versions()
    specs = []
    for name in names:
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            version = have.get(name)
        specs.append(f"{name}=={version}" if version else name)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
           python_version, "--implementation", "cp", *[a for p in WHEEL_PLATFORMS for a in ("--platform", p)],
           "-d", str(dest), *specs]
    print("$ " + shlex.join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    for wheel in sorted(dest.glob("*.whl")):
        dropped = slim_wheel(wheel)
        if dropped:
            print(f"{wheel.name}: left out {', '.join(dropped)}")
    total = sum(w.stat().st_size for w in dest.glob("*.whl"))
    print(f"{dest}: {len(list(dest.glob('*.whl')))} wheels, {total / 2**20:.1f} MiB")


def install_wheels(folder: Path) -> dict[str, Any]:
    """``pip install --no-index --no-deps --target TMP folder/*.whl``, then TMP first on sys.path and in
    PYTHONPATH (for the child processes). Runs before torch or rkd are imported."""
    wheels = sorted(glob.glob(str(folder / "*.whl")))
    if not wheels:
        return {"folder": str(folder), "installed": [], "note": "no wheels found"}
    target = Path(tempfile.mkdtemp(prefix="rkd-gpu-check-site-"))
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
           "--no-cache-dir", "--upgrade", "--target", str(target), *wheels]
    start = time.monotonic()
    subprocess.run(cmd, check=True)
    sys.path.insert(0, str(target))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH")]))
    importlib.invalidate_caches()
    return {"folder": str(folder), "target": str(target), "installed": [Path(w).name for w in wheels],
            "seconds": round(time.monotonic() - start, 1)}


# ---- section 5: environment ------------------------------------------------------------------------------------


def section_environment(report: Report, sizes: Sizes, sec: dict[str, Any], deadline: float) -> None:
    import torch

    sys.path.insert(0, str(BENCH_DIR))
    import _common

    report.data["machine"] = _common.machine_info()
    gpu: dict[str, Any] = {"cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu.update(name=props.name, total_memory_gib=round(props.total_memory / 2**30, 1),
                   multiprocessors=props.multi_processor_count, capability=f"{props.major}.{props.minor}",
                   device_count=torch.cuda.device_count())
        if shutil.which("nvidia-smi"):
            smi = run_cmd(report, ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.sm,"
                                   "clocks.max.sm,power.draw,temperature.gpu", "--format=csv"], 20)
            gpu["nvidia_smi"] = smi["output_tail"].strip()
    report.data["machine"]["gpu"] = gpu
    report.data["versions"] = {
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "python": sys.version.split()[0], **{k: v for k, v in package_versions().items() if k != "torch"},
    }
    report.data["torch_settings"] = {
        "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
        "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn.benchmark": torch.backends.cudnn.benchmark,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    missing = []
    for dist, module in NEEDS:
        try:
            importlib.import_module(module)
        except Exception as e:  # a package present but broken counts as missing
            missing.append(f"{dist} ({type(e).__name__}: {e})")
    sec["missing_packages"] = missing
    sec["needs"] = [d for d, _ in NEEDS]
    env_out = run_cmd(report, [sys.executable, "-m", "rkd", "env"], min(30.0, deadline - report.elapsed()),
                      env=child_env())
    sec["rkd_env"] = {"rc": env_out["rc"], "output_tail": env_out["output_tail"]}
    report.log(f"GPU: {gpu.get('name', 'none')}; torch {torch.__version__} CUDA {torch.version.cuda}; "
               f"missing: {', '.join(missing) or 'nothing'}")


# ---- section 1: the CUDA tests ---------------------------------------------------------------------------------


def section_cuda_tests(report: Report, sizes: Sizes, sec: dict[str, Any], deadline: float) -> None:
    junit = Path(tempfile.mkdtemp(prefix="rkd-gpu-check-junit-")) / "junit.xml"
    cmd = [sys.executable, "-m", "pytest", *sizes.pytest_args, "-q", "-p", "no:cacheprovider",
           "--continue-on-collection-errors", f"--junitxml={junit}"]
    res = run_cmd(report, cmd, deadline - report.elapsed(), env=child_env(sizes.pytest_env))
    sec.update({k: res[k] for k in ("command", "rc", "seconds", "timed_out")})
    last = [ln for ln in res["output_tail"].splitlines() if ln.strip()]
    sec["summary"] = last[-1].strip("= ") if last else ""
    tests: list[dict[str, Any]] = []
    if junit.is_file():
        for case in ET.parse(junit).getroot().iter("testcase"):
            outcome = "passed"
            message = None
            for tag in ("failure", "error", "skipped"):
                el = case.find(tag)
                if el is not None:
                    outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                    message = (el.get("message") or "")[:300]
            tests.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                          "seconds": float(case.get("time") or 0), "message": message})
    sec["tests"] = tests
    counts: dict[str, int] = {}
    for t in tests:
        counts[t["outcome"]] = counts.get(t["outcome"], 0) + 1
    sec["counts"] = counts
    if res["timed_out"]:
        sec["status"] = "skipped: time (pytest stopped at its deadline; the tests it finished are listed)"
    elif res["rc"] != 0:
        sec["status"] = f"failed: pytest exit {res['rc']} ({sec['summary']})"
    if res["rc"] != 0:
        sec["output_tail"] = res["output_tail"]
    report.log(f"pytest: {sec['summary']}")


# ---- section 2: the distillation step --------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    key: str  # "<name>/<precision>/<mode>"
    kind: str  # adv_path | rslad | ard | reference_adv_path | reference_rslad | reference_ard | published_rslad |
    #            published_ard
    knobs: tuple[tuple[str, Any], ...]
    amp: str  # "bf16" | "off"
    compiled: bool
    what: str


def eager_variants(batch: int, published_rslad: Path | None = None,
                   published_ard: Path | None = None) -> list[Variant]:
    rec, cand = tuple(RECONSTRUCTION.items()), tuple(CANDIDATE.items())
    out = []
    for amp, prec in (("bf16", "bf16"), ("off", "fp32")):
        out += [Variant(f"adv_path_reconstruction/{prec}/one_pass", "adv_path", rec, amp, False,
                        "adv_path, reconstruction preset, alignment in one pass"),
                Variant(f"adv_path_candidate/{prec}/one_pass", "adv_path", cand, amp, False,
                        "adv_path candidate: gamma 0, KL ascent, linear weights summed, clean target"),
                Variant(f"rslad/{prec}/eager", "rslad", (), amp, False, "RSLAD"),
                Variant(f"ard/{prec}/eager", "ard", (), amp, False, "ARD")]
    out += [Variant(f"adv_path_reconstruction/bf16/chunks_of_{batch}", "adv_path", rec + (("max_batch", batch),),
                    "bf16", False, f"alignment in chunks of B = {batch}"),
            Variant(f"adv_path_reconstruction/bf16/chunks_of_{RECIPE_MAX_BATCH}", "adv_path",
                    rec + (("max_batch", RECIPE_MAX_BATCH),), "bf16", False,
                    f"alignment in chunks of {RECIPE_MAX_BATCH} (the paper recipe's max_batch)"),
            Variant("adv_path_reconstruction/bf16/low_memory", "adv_path", rec + (("low_memory", True),), "bf16",
                    False, "low_memory: each chunk of B backpropagated on its own"),
            Variant("reference_adv_path/fp32/research_code", "reference_adv_path", rec, "off", False,
                    "adv_path written the straightforward way (a PGD loop per branch, a teacher and a student "
                    "call per iterate), fp32 eager NCHW"),
            Variant("reference_rslad/fp32/research_code", "reference_rslad", (), "off", False,
                    "RSLAD as zibojia/RSLAD writes it (fp32 eager NCHW, autograd.grad loop)"),
            Variant("reference_ard/fp32/research_code", "reference_ard", (), "off", False,
                    "ARD as goldblum/AdversariallyRobustDistillation writes it (fp32 eager NCHW, autograd.grad "
                    "loop, train-mode attack, every loss term in the graph)")]
    if published_rslad is not None:
        out.append(Variant("published_rslad/fp32/published_code", "published_rslad", (), "off", False,
                           "the published code itself: zibojia/RSLAD's rslad_inner_loss (imported from "
                           f"{published_rslad}) and its training-loop body, fp32 eager NCHW"))
    if published_ard is not None:
        out.append(Variant("published_ard/fp32/published_code", "published_ard", (), "off", False,
                           "the published code itself: goldblum/AdversariallyRobustDistillation's AttackPGD "
                           f"(compiled from {published_ard}/main.py) and the body of its train, fp32 eager NCHW"))
    return out


def compiled_groups() -> list[tuple[str, list[Variant]]]:
    """Compiled-attack variants, each with its eager twin, in priority order (one group per student each): adv_path
    and RSLAD first, ARD last."""
    rec = tuple(RECONSTRUCTION.items())
    groups = []
    for kind, knobs, label in (("adv_path", rec, "adv_path_reconstruction"), ("rslad", (), "rslad"),
                               ("ard", (), "ard")):
        for amp, prec in (("bf16", "bf16"), ("off", "fp32")):
            mode = "one_pass" if kind == "adv_path" else "eager"
            groups.append((f"{label}/{prec}", [
                Variant(f"{label}/{prec}/compiled", kind, knobs, amp, True, "compiled attack (train.compile_attack)"),
                Variant(f"{label}/{prec}/{mode}", kind, knobs, amp, False, "its eager twin"),
            ]))
    order = [0, 2, 1, 3, 4, 5]  # bf16 adv_path, bf16 RSLAD, fp32 adv_path, fp32 RSLAD, bf16 ARD, fp32 ARD
    return [groups[i] for i in order]


@dataclass
class StepContext:
    sizes: Sizes
    device: Any
    benches: dict[str, Any] = field(default_factory=dict)  # student label -> Bench (channels_last)
    nchw: dict[str, Any] = field(default_factory=dict)  # student label -> Bench (NCHW, for the references)
    reference_loss: Any = None
    published_rslad: Path | None = None  # a zibojia/RSLAD checkout (--published-rslad); None: not timed
    published_ard: Path | None = None  # a goldblum/AdversariallyRobustDistillation checkout (--published-ard)


def compile_model(sizes: Sizes, model: Any) -> Any:
    import torch

    if sizes.compile_backend == "inductor":
        from rkd.attacks import compile_attack_model

        return compile_attack_model(model)
    return torch.compile(model, backend=sizes.compile_backend)


def build_step(ctx: StepContext, student: str, v: Variant) -> Callable[[], None]:
    import _reference as rs
    import _step as ds

    bench = dataclasses.replace(ctx.benches[student], amp=v.amp)
    knobs = dict(v.knobs)
    if v.kind in ("adv_path", "rslad", "ard"):
        method, opt = ds.build_method(bench, v.kind, **knobs)
        if v.compiled:
            method.attack_model = compile_model(ctx.sizes, method.student)
        return lambda: ds.train_step(bench, method, opt)
    nchw = dataclasses.replace(ctx.nchw[student], amp="off")
    if v.kind == "reference_adv_path":
        if ctx.reference_loss is None:
            ctx.reference_loss = ds.load_reference_loss()
        method, opt = ds.build_method(nchw, "adv_path", **knobs)
        reference = ds.ReferenceAdvPath(method, nchw.num_classes, ctx.reference_loss)
        return lambda: ds.train_step(nchw, method, opt, lambda: reference.loss(nchw.x, nchw.y))
    if v.kind in ("published_rslad", "published_ard"):
        name = v.kind.removeprefix("published_")
        method, _ = ds.build_method(nchw, name)
        folder = ctx.published_rslad if name == "rslad" else ctx.published_ard
        pub = rs.make_published(method, copy.deepcopy(nchw.student), copy.deepcopy(nchw.teacher), {name: folder})
        if pub is None:
            raise ValueError(f"{v.kind} needs --published-{name} DIR")
        return lambda: pub.step(nchw.x, nchw.y)
    if v.kind in ("reference_rslad", "reference_ard"):
        method, _ = ds.build_method(nchw, v.kind.removeprefix("reference_"))
        ref = rs.make_reference(method, copy.deepcopy(nchw.student), nchw.teacher, rs.Knobs(), None)
        return lambda: ref.step(nchw.x, nchw.y)
    raise ValueError(f"unknown variant kind {v.kind!r}")


def free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_group(report: Report, ctx: StepContext, student: str, variants: list[Variant], deadline: float,
              warmup: int, flops: bool = False) -> dict[str, Any]:
    """Build and warm up each variant (skipped when its deadline is near), then interleaved timed rounds. With
    ``flops``, each variant's FLOPs are counted on one more step after its warm-up (``_step.count_flops``; not
    timed), and GFLOP/s is given per round beside its time."""
    import _step as ds
    import torch

    cuda = ctx.device.type == "cuda"
    batch = ctx.sizes.batch
    res: dict[str, Any] = {}
    steps: dict[str, Callable[[], None]] = {}
    last_warm: dict[str, float] = {}

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(ctx.device)

    for v in variants:
        entry = res.setdefault(v.key, {"what": v.what, "amp": v.amp, "compiled": v.compiled,
                                       "knobs": dict(v.knobs)})
        left = deadline - report.elapsed()
        need = ctx.sizes.compile_reserve_s if v.compiled else 2.0
        if left < need:
            entry["status"] = f"skipped: time ({left:.0f} s left, {need:.0f} s needed)"
            report.log(f"  {student} {v.key}: {entry['status']}")
            continue
        try:
            step = build_step(ctx, student, v)
            calls = []
            for _ in range(warmup + (1 if v.compiled else 0)):
                sync()
                t = time.perf_counter()
                step()
                sync()
                calls.append(time.perf_counter() - t)
            entry["first_call_s"] = calls[0]
            entry["warmup_calls_s"] = calls
            last_warm[v.key] = calls[-1]
            if flops:
                sync()
                t = time.perf_counter()
                try:
                    entry["gflop_per_step"] = ds.count_flops(step) / 1e9
                except torch.cuda.OutOfMemoryError:
                    raise
                except Exception as e:  # the count must never cost the timing
                    entry["flop_count_error"] = f"{type(e).__name__}: {str(e)[:300]}"
                    free_memory()
                sync()
                entry["flop_count_call_s"] = time.perf_counter() - t
            steps[v.key] = step
            entry["status"] = "ok"
            counted = f", {entry['gflop_per_step']:.4g} GFLOP/step" if "gflop_per_step" in entry else ""
            report.log(f"  {student} {v.key}: first call {calls[0]:.2f} s, last warm-up {calls[-1]:.3f} s"
                       f"{counted}")
        except torch.cuda.OutOfMemoryError as e:
            entry["status"] = f"failed: out of memory ({str(e).splitlines()[0][:200]})"
            report.log(f"  {student} {v.key}: {entry['status']}")
            free_memory()
        except Exception as e:
            entry["status"] = f"failed: {type(e).__name__}: {str(e)[:300]}"
            entry["traceback"] = traceback.format_exc()[-3000:]
            report.log(f"  {student} {v.key}: {entry['status']}")
            free_memory()
    times: dict[str, list[float]] = {k: [] for k in steps}
    peaks: dict[str, list[int]] = {k: [] for k in steps}
    growth: dict[str, list[int]] = {k: [] for k in steps}
    names = list(steps)
    rounds_done = 0
    for r in range(ctx.sizes.rounds):
        estimate = sum(statistics.median(times[k]) if times[k] else last_warm[k] for k in names)
        if report.elapsed() + estimate > deadline:
            report.log(f"  {student}: round {r + 1} skipped (needs about {estimate:.0f} s)")
            break
        for k in names if r % 2 == 0 else names[::-1]:
            try:
                if cuda:
                    torch.cuda.reset_peak_memory_stats(ctx.device)
                    before = torch.cuda.memory_allocated(ctx.device)
                sync()
                t = time.perf_counter()
                steps[k]()
                sync()
                times[k].append(time.perf_counter() - t)
                if cuda:
                    peak = torch.cuda.max_memory_allocated(ctx.device)
                    peaks[k].append(peak)
                    growth[k].append(peak - before)
            except Exception as e:  # e.g. out of memory in a later round: the variant leaves the rounds
                res[k]["status"] = f"failed in round {r + 1}: {type(e).__name__}: {str(e)[:200]}"
                names.remove(k)
                free_memory()
        rounds_done = r + 1
        report.log(f"  {student} round {r + 1}: " + ", ".join(f"{k} {times[k][-1]:.3f}s" for k in names
                                                                if times[k]))
    for k in steps:
        entry = res[k]
        entry["rounds"] = len(times[k])
        entry["seconds"] = spread(times[k])
        entry["images_per_second"] = spread([batch / t for t in times[k]])
        if entry.get("gflop_per_step"):
            entry["gflop_per_second"] = spread([entry["gflop_per_step"] / t for t in times[k]])
        if cuda and peaks[k]:
            entry["peak_bytes"] = max(peaks[k])
            entry["growth_bytes"] = max(growth[k])
        if entry["status"] == "ok" and len(times[k]) < ctx.sizes.rounds:
            entry["status"] = f"partial: {len(times[k])} of {ctx.sizes.rounds} rounds (time)"
    res["_rounds_done"] = rounds_done
    res["_times"] = times
    return res


def make_benches(ctx: StepContext, report: Report) -> None:
    import _step as ds
    import torch

    s = ctx.sizes
    for arch in s.students:
        common = dict(batch=s.batch, steps=s.steps, num_classes=10, device=ctx.device, seed=0)
        bench = ds.make_bench(arch, s.teacher, channels_last=True, **common)
        label = arch.label(bench.student)
        ctx.benches[label] = bench
        fmt = torch.contiguous_format
        ctx.nchw[label] = dataclasses.replace(
            bench, student=copy.deepcopy(bench.student).to(memory_format=fmt),
            teacher=copy.deepcopy(bench.teacher).to(memory_format=fmt), x=bench.x.contiguous(),
            channels_last=False, amp="off")
        report.log(f"bench {label}: teacher {s.teacher.label(bench.teacher)}, batch {s.batch}, m = {s.steps}")


def static_bytes(bench: Any) -> dict[str, int]:
    def size(module: Any) -> int:
        return sum(p.numel() * p.element_size() for p in module.parameters())

    return {"student_weights": size(bench.student), "sgd_momentum": size(bench.student),
            "teacher_weights": size(bench.teacher), "batch": bench.x.numel() * bench.x.element_size()}


def summarise_student(sizes: Sizes, res: dict[str, Any], bench: Any) -> dict[str, Any]:
    """Ratios between variants of one student, per round where they ran in the same rounds."""
    import _step as ds

    times = res.get("_times", {})
    b = sizes.batch
    out: dict[str, Any] = {}

    def ratio(name: str, num: str, den: str) -> None:
        if times.get(num) and times.get(den):
            out[name] = {"num": num, "den": den, **(paired(times[num], times[den]) or {})}

    for prec in ("fp32", "bf16"):
        ratio(f"speedup_reference_over_rkd_adv_path_{prec}", "reference_adv_path/fp32/research_code",
              f"adv_path_reconstruction/{prec}/one_pass")
        ratio(f"speedup_reference_over_rkd_rslad_{prec}", "reference_rslad/fp32/research_code", f"rslad/{prec}/eager")
        ratio(f"speedup_published_over_rkd_rslad_{prec}", "published_rslad/fp32/published_code", f"rslad/{prec}/eager")
        ratio(f"speedup_reference_over_rkd_ard_{prec}", "reference_ard/fp32/research_code", f"ard/{prec}/eager")
        ratio(f"speedup_published_over_rkd_ard_{prec}", "published_ard/fp32/published_code", f"ard/{prec}/eager")
        ratio(f"time_adv_path_over_rslad_{prec}", f"adv_path_reconstruction/{prec}/one_pass", f"rslad/{prec}/eager")
        ratio(f"time_candidate_over_reconstruction_{prec}", f"adv_path_candidate/{prec}/one_pass",
              f"adv_path_reconstruction/{prec}/one_pass")
    ratio("time_reference_over_published_rslad", "reference_rslad/fp32/research_code",
          "published_rslad/fp32/published_code")
    ratio("time_reference_over_published_ard", "reference_ard/fp32/research_code", "published_ard/fp32/published_code")
    for name in ("adv_path_reconstruction", "adv_path_candidate"):
        ratio(f"speedup_bf16_over_fp32_{name}", f"{name}/fp32/one_pass", f"{name}/bf16/one_pass")
    ratio("speedup_bf16_over_fp32_rslad", "rslad/fp32/eager", "rslad/bf16/eager")
    ratio("speedup_bf16_over_fp32_ard", "ard/fp32/eager", "ard/bf16/eager")
    for mode in (f"chunks_of_{b}", f"chunks_of_{RECIPE_MAX_BATCH}", "low_memory"):
        key = f"adv_path_reconstruction/bf16/{mode}"
        ratio(f"time_{mode}_over_one_pass_bf16", key, "adv_path_reconstruction/bf16/one_pass")
        one, other = res.get("adv_path_reconstruction/bf16/one_pass", {}), res.get(key, {})
        if one.get("growth_bytes") and other.get("growth_bytes"):
            out[f"memory_growth_{mode}_over_one_pass_bf16"] = other["growth_bytes"] / one["growth_bytes"]
    f_s = ds.macs_per_image(bench.student, bench.device)
    f_t = ds.macs_per_image(bench.teacher, bench.device)
    out["macs"] = {"student_macs_per_image": f_s, "teacher_macs_per_image": f_t, "formula": ds.FLOP_MODEL,
                   "implied": ds.implied_macs(f_s, f_t, sizes.steps)}
    out["static_bytes"] = static_bytes(bench)
    return out


def section_distill_step(report: Report, ctx: StepContext, sec: dict[str, Any], deadline: float) -> None:
    import torch

    s = ctx.sizes
    sec["config"] = {"students": [a.label() for a in s.students], "teacher": s.teacher.label(),
                     "batch": s.batch, "steps": s.steps, "rounds": s.rounds, "warmup": s.warmup,
                     "device": s.device, "channels_last": True, "optimizer": "SGD lr 0.1 momentum 0.9 wd 2e-4",
                     "reconstruction": RECONSTRUCTION, "candidate": CANDIDATE,
                     "data": "uniform random images, random labels; untrained models (cost depends on neither)",
                     "flops": FLOPS_NOTE}
    torch.manual_seed(0)
    make_benches(ctx, report)
    sec["students"] = {}
    labels = list(ctx.benches)
    for i, label in enumerate(labels):
        # the students share what is left; the last one gets the rest
        share = deadline - (deadline - report.elapsed()) * (len(labels) - 1 - i) / (len(labels) - i)
        report.log(f"distill_step {label}: until {share:.0f} s")
        res = run_group(report, ctx, label, eager_variants(s.batch, ctx.published_rslad, ctx.published_ard), share,
                        s.warmup, flops=True)
        times = res.pop("_times")
        rounds = res.pop("_rounds_done")
        summary = summarise_student(s, {**res, "_times": times}, ctx.benches[label])
        sec["students"][label] = {"variants": res, "rounds_done": rounds, "ratios": summary}
        free_memory()
        report.write()
    failed = [f"{lab}: {k}" for lab, st in sec["students"].items() for k, v in st["variants"].items()
              if not str(v.get("status", "")).startswith("ok")]
    if failed:
        sec["not_ok"] = failed
        sec["status"] = "partial: " + "; ".join(failed)[:500]


COMPILED_RECOMPILE_LIMIT = 64  # dynamo's graphs per code object in this process (torch's default: 8)


def raise_recompile_limit(limit: int) -> int | None:
    """Let dynamo keep up to ``limit`` graphs of one code object. Every group compiles the students' shared
    ``forward`` anew for its architecture, autocast state and mode (ARD attacks in train mode), more than torch's
    default 8 together; past the limit dynamo would run the compiled variants eagerly (a warning, no error).
    Returns the limit now in force (None where this torch has neither setting)."""
    import torch._dynamo

    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, max(int(getattr(cfg, name)), limit))
            return int(getattr(cfg, name))
    return None


def section_compiled(report: Report, ctx: StepContext, sec: dict[str, Any], deadline: float) -> None:
    s = ctx.sizes
    sec["backend"] = s.compile_backend
    sec["recompile_limit"] = raise_recompile_limit(COMPILED_RECOMPILE_LIMIT)
    sec["groups"] = []
    if not ctx.benches:
        sec["status"] = "skipped: no benches (distill_step did not run)"
        return
    for name, variants in compiled_groups():
        for label in ctx.benches:
            group = {"student": label, "group": name}
            sec["groups"].append(group)
            if deadline - report.elapsed() < s.compile_reserve_s:
                group["status"] = "skipped: time"
                continue
            report.log(f"compiled {label} {name}")
            res = run_group(report, ctx, label, variants, deadline, s.warmup)
            times = res.pop("_times")
            res.pop("_rounds_done")
            group["variants"] = res
            comp, eager = variants[0].key, variants[1].key
            group["speedup_compiled_over_eager"] = paired(times.get(eager, []), times.get(comp, []))
            group["status"] = "ok" if all(str(v.get("status")) == "ok" for v in res.values()) else "partial"
            free_memory()
            report.write()
    skipped = [f"{g['student']} {g['group']}" for g in sec["groups"] if g.get("status") != "ok"]
    if skipped:
        sec["status"] = "partial: not complete: " + ", ".join(skipped)


# ---- section 3: the sanity run and the projection ----------------------------------------------------------------


def read_metrics(path: Path) -> dict[str, Any]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    steps = [r for r in rows if "img_per_s" in r]
    evals = [r for r in rows if r.get("event") == "eval"]
    start = next((r for r in rows if r.get("event") == "start"), {})
    end = next((r for r in rows if r.get("event") == "end"), {})
    last_epoch = max((r["epoch"] for r in steps), default=0)
    steady = [r["img_per_s"] for r in steps if r["epoch"] == last_epoch and last_epoch > 1]
    eval_s = []
    for ev in evals:
        before = [r["time"] for r in steps if r["time"] <= ev["time"]]
        if before:
            eval_s.append(ev["time"] - max(before))
    return {"steps_per_epoch": start.get("steps_per_epoch"), "epochs": start.get("epochs"),
            "img_per_s_all": [r["img_per_s"] for r in steps], "img_per_s_last_epoch": spread(steady),
            "eval_seconds": spread(eval_s), "eval_n": evals[-1].get("n") if evals else None,
            "evals": [{k: v for k, v in e.items() if k != "time"} for e in evals],
            "train_seconds": end.get("seconds")}


def projection(sizes: Sizes, sec: dict[str, Any], step_sec: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    """The paper recipe's wall time: its steps times section 2's step time (WRN-34-10 teacher, the recipe's
    settings), plus its periodic evaluations at the sanity run's evaluation cost per image."""
    import yaml

    recipe = yaml.safe_load(RECIPE.read_text())
    data, train = recipe["data"], recipe["student"]["train"]
    epochs, holdout, batch = int(train["epochs"]), int(data.get("holdout", 500)), int(data.get("batch_size", 128))
    steps_per_epoch = (CIFAR10_TRAIN - holdout) // batch  # the loader drops the last incomplete batch
    eval_every, eval_n = int(train.get("eval_every", 1)), int(train.get("eval_n", 500))
    n_evals = epochs // eval_every if eval_every else 1
    out: dict[str, Any] = {"recipe": str(RECIPE.relative_to(REPO)), "epochs": epochs,
                           "steps_per_epoch": steps_per_epoch, "train_images": CIFAR10_TRAIN - holdout,
                           "batch": batch, "evaluations": n_evals, "eval_n": eval_n,
                           "eval_pgd_steps": train.get("eval_pgd_steps")}
    per_image_eval = None
    if metrics.get("eval_seconds") and metrics.get("eval_n"):
        per_image_eval = metrics["eval_seconds"]["median"] / metrics["eval_n"]
    eval_total = n_evals * eval_n * per_image_eval if per_image_eval is not None else 0.0
    out["eval_seconds_total"] = eval_total
    students = step_sec.get("students", {})
    r18 = next((v for k, v in students.items() if k.startswith("resnet18")), None)
    source = None
    if r18:
        for key in (f"adv_path_reconstruction/bf16/chunks_of_{RECIPE_MAX_BATCH}",
                    "adv_path_reconstruction/bf16/one_pass"):
            if (r18["variants"].get(key) or {}).get("seconds"):
                source = key
                break
    if source and r18:
        s = r18["variants"][source]["seconds"]
        total = {k: (epochs * steps_per_epoch * s[k] + eval_total) / 3600 for k in ("median", "min", "max")}
        out["wrn34_10_teacher"] = {"step_variant": source, "step_seconds": s["median"],
                                   "hours": total, "what": "the student stage: section 2's step (ResNet-18 "
                                   "student, WRN-34-10 teacher, batch 128, m = 10) x the recipe's steps, plus its "
                                   "evaluations; the teacher's own training is not included"}
    rate = metrics.get("img_per_s_last_epoch")
    if rate:
        small = {k: (epochs * steps_per_epoch * batch / rate[k] + eval_total) / 3600
                 for k in ("median", "min", "max")}
        out["small_teacher"] = {"img_per_s": rate["median"], "hours": {"median": small["median"],
                                "min": small["max"], "max": small["min"]},
                                "what": "the sanity run's own step rate (committed ResNet-18 1/4 teacher): a "
                                "lower bound, the WRN-34-10 teacher costs more"}
    return out


def section_sanity(report: Report, ctx: StepContext, sec: dict[str, Any], deadline: float,
                   work: Path, step_sec: dict[str, Any]) -> None:
    s = ctx.sizes
    run_dir = work / "student"
    knobs = [f"student.method.{k}={v}" for k, v in RECONSTRUCTION.items()]
    cmd = [sys.executable, "-m", "rkd", "distill", str(RECIPE), "--teacher", str(SMALL_TEACHER), "--device",
           s.device, "--out", str(run_dir), "--set", "data.dataset=synthetic",
           "--set", f"student.train.epochs={s.sanity_epochs}",
           *[a for kv in (*s.sanity_sets, *knobs) for a in ("--set", kv)]]
    res = run_cmd(report, cmd, deadline - report.elapsed(), env=child_env())
    sec.update({k: res[k] for k in ("command", "rc", "seconds", "timed_out")})
    sec["teacher"] = f"{SMALL_TEACHER.relative_to(REPO)} (ResNet-18 width 0.25, committed)"
    sec["data"] = "synthetic (data.dataset=synthetic)"
    if res["rc"] != 0:
        sec["output_tail"] = res["output_tail"]
        sec["status"] = "skipped: time" if res["timed_out"] else f"failed: rkd distill exit {res['rc']}"
        return
    metrics = read_metrics(run_dir / "metrics.jsonl")
    sec["metrics"] = metrics
    sec["checkpoint"] = str(run_dir / "model.safetensors")
    sec["projection"] = projection(s, sec, step_sec, metrics)
    rate = metrics.get("img_per_s_last_epoch") or {}
    report.log(f"sanity: {rate.get('median', float('nan')):.0f} img/s (last epoch); projection "
               f"{json.dumps(sec['projection'].get('wrn34_10_teacher', {}).get('hours'))} h")


# ---- section 4: export and verify --------------------------------------------------------------------------------


def section_export_verify(report: Report, ctx: StepContext, sec: dict[str, Any], deadline: float,
                          work: Path, sanity: dict[str, Any]) -> None:
    s = ctx.sizes
    ckpt = Path(sanity.get("checkpoint") or "")
    if not ckpt.is_file():  # no sanity run: an untrained ResNet-18 stands in (the path is what is checked)
        import torch

        from rkd.models import create_model, save_checkpoint

        torch.manual_seed(0)
        ckpt = save_checkpoint(create_model("resnet18", num_classes=10),
                               work / "untrained" / "model.safetensors",
                               metadata={"data": {"dataset": "synthetic",
                                                  "classes": [f"class{k}" for k in range(10)]},
                                         "threat": {"norm": "linf", "eps": 8 / 255, "alpha": 2 / 255}})
        sec["checkpoint_note"] = "the sanity run left no checkpoint: an untrained ResNet-18 was exported"
    sec["checkpoint"] = str(ckpt)
    bundle = work / "bundle"
    exp = run_cmd(report, [sys.executable, "-m", "rkd", "export", str(ckpt), "--out", str(bundle), "--force",
                           "--parity-data", f"synthetic:n={max(s.parity_n, 128)}", "--parity-n", str(s.parity_n)],
                  deadline - report.elapsed(), env=child_env())
    sec["export"] = {k: exp[k] for k in ("command", "rc", "seconds", "timed_out")}
    manifest = bundle / "manifest.json"
    if exp["rc"] == 0 and manifest.is_file():
        m = json.loads(manifest.read_text())
        sec["export"]["parity"] = (m.get("export") or {}).get("parity")
    else:
        sec["export"]["output_tail"] = exp["output_tail"]
    vdir = work / "verify"
    ver = run_cmd(report, [sys.executable, "-m", "rkd", "verify", "--engine", str(ckpt), "--device", s.device,
                           "--data", f"synthetic:n={max(s.verify_n, 128)}", "--n", str(s.verify_n),
                           "--attacks", s.verify_attacks, "--no-gates", "--report", str(vdir)],
                  deadline - report.elapsed(), env=child_env())
    sec["verify"] = {k: ver[k] for k in ("command", "rc", "seconds", "timed_out")}
    vjson = vdir / "verify.json"
    if ver["rc"] == 0 and vjson.is_file():
        v = json.loads(vjson.read_text())
        sec["verify"].update({
            "n": v.get("n"), "clean_acc": v.get("clean_acc"), "robust_acc": v.get("robust_acc"),
            "attacks": {k: {kk: _round(a.get(kk)) for kk in ("acc", "seconds", "ci95") if kk in a}
                        if isinstance(a, dict) else a for k, a in (v.get("attacks") or {}).items()},
            "timing": v.get("timing"), "artifact": {k: (v.get("artifact") or {}).get(k)
                                                    for k in ("runtime", "device", "kind")},
            "warnings": v.get("warnings")})
    else:
        sec["verify"]["output_tail"] = ver["output_tail"]
    bad = [name for name, r in (("export", exp), ("verify", ver)) if r["rc"] != 0]
    if bad:
        timed = any(r["timed_out"] for r in (exp, ver))
        sec["status"] = ("skipped: time in " if timed else "failed: ") + ", ".join(bad)


# ---- Markdown ----------------------------------------------------------------------------------------------------


def _round(x: Any, digits: int = 4) -> Any:
    if isinstance(x, float):
        return round(x, digits)
    if isinstance(x, (list, tuple)):
        return [_round(v, digits) for v in x]
    return x


def _cell(s: dict[str, Any] | None, digits: int) -> str:
    if not s:
        return ""
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}, {s['max']:.{digits}f}]"


def _cell_g(s: dict[str, Any] | None) -> str:
    """median [min, max] to 3 significant digits."""
    if not s:
        return ""
    return f"{s['median']:.3g} [{s['min']:.3g}, {s['max']:.3g}]"


def _mib(b: Any) -> str:
    return f"{b / 2**20:,.0f}" if isinstance(b, (int, float)) else ""


def markdown(rep: dict[str, Any]) -> str:
    secs = rep.get("sections", {})
    mach = rep.get("machine", {})
    gpu = mach.get("gpu", {})
    ver = rep.get("versions", {})
    lines = [f"# rkd GPU check ({rep.get('mode')})", "",
             f"{rep.get('date')}; {gpu.get('name') or 'no GPU'} "
             f"({gpu.get('total_memory_gib', '?')} GiB, capability {gpu.get('capability', '?')}); CPU "
             f"{mach.get('cpu_model') or mach.get('processor')} ({mach.get('cpu_count')} cores); torch "
             f"{ver.get('torch')}, CUDA {ver.get('cuda')}, cuDNN {ver.get('cudnn')}, Python {ver.get('python')}.",
             f"Elapsed {rep.get('elapsed_s')} s of a {rep.get('budget_s')} s budget"
             f"{'; STOPPED at the budget: ' + str(rep.get('stopped')) if rep.get('stopped') else ''}.", "",
             f"Command: `{rep.get('command')}`", ""]
    lines += [f"- {n}" for n in rep.get("notes", [])]
    lines += ["", "| section | status | seconds |", "|---|---|---|"]
    for name, sec in secs.items():
        lines.append(f"| {name} | {sec.get('status')} | {sec.get('seconds', '')} |")

    t = secs.get("cuda_tests", {})
    lines += ["", "## 1. CUDA tests", "", f"`{t.get('command', '')}`: {t.get('summary', '')}", ""]
    bad = [x for x in t.get("tests", []) if x["outcome"] in ("failed", "error")]
    if bad:
        lines += ["| failed test | message |", "|---|---|",
                  *[f"| {x['test']} | {str(x['message']).replace('|', '/')[:200]} |" for x in bad], ""]
    if t.get("counts"):
        lines.append("Outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(t["counts"].items())) + ".")

    st = secs.get("distill_step", {})
    cfg = st.get("config", {})
    lines += ["", "## 2. The distillation step", "",
              f"Teacher {cfg.get('teacher')}, batch {cfg.get('batch')}, m = {cfg.get('steps')}, channels_last, "
              f"{cfg.get('rounds')} rounds after {cfg.get('warmup')} warm-up call(s), variants interleaved, order "
              "reversed every other round; median [min, max] over rounds. Peak: `torch.cuda.max_memory_allocated` "
              "during the step (everything held, including the other variants' weights); growth: the peak minus "
              "the memory allocated before the step; alone: growth + student weights + momentum + teacher "
              "weights + batch, the step's peak in a process of its own.",
              "", f"{cfg.get('flops', FLOPS_NOTE)}."]
    for label, stu in st.get("students", {}).items():
        static = sum(stu.get("ratios", {}).get("static_bytes", {}).values())
        lines += ["", f"### {label}", "",
                  "| variant | s/step | img/s | GFLOP/step | GFLOP/s | growth MiB | alone MiB | first call s | "
                  "status |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for key, v in stu.get("variants", {}).items():
            alone = v.get("growth_bytes", 0) + static if v.get("growth_bytes") else None
            gflop = f"{v['gflop_per_step']:.4g}" if v.get("gflop_per_step") else ""
            lines.append(f"| {key} | {_cell(v.get('seconds'), 3)} | {_cell(v.get('images_per_second'), 0)} | "
                         f"{gflop} | {_cell_g(v.get('gflop_per_second'))} | "
                         f"{_mib(v.get('growth_bytes'))} | {_mib(alone)} | "
                         f"{v.get('first_call_s', 0):.2f} | {v.get('status')} |")
        ratios = stu.get("ratios", {})
        items = [(k, r) for k, r in ratios.items() if isinstance(r, dict) and "median" in r]
        if items:
            lines += ["", "| ratio (per round) | median [min, max] |", "|---|---|",
                      *[f"| {k} | {_cell(r, 2)} |" for k, r in items]]
        mem = [(k, r) for k, r in ratios.items() if k.startswith("memory_growth")]
        lines += [f"- {k}: {r:.2f}" for k, r in mem]
        macs = ratios.get("macs", {}).get("implied")
        if macs:
            lines.append(f"- MACs implied per image: adv_path {macs['adv_path_per_image'] / 1e9:.1f} G, RSLAD "
                         f"{macs['rslad_per_image'] / 1e9:.1f} G (ratio {macs['ratio']:.2f})")

    comp = secs.get("distill_step_compiled", {})
    if comp.get("groups"):
        lines += ["", f"### Compiled attack (backend {comp.get('backend')})", "",
                  "| student | variant | s/step | img/s | first call s (compile) | speed-up over eager twin | status |",
                  "|---|---|---|---|---|---|---|"]
        for g in comp["groups"]:
            for key, v in (g.get("variants") or {}).items():
                up = _cell(g.get("speedup_compiled_over_eager"), 2) if v.get("compiled") else ""
                lines.append(f"| {g['student']} | {key} | {_cell(v.get('seconds'), 3)} | "
                             f"{_cell(v.get('images_per_second'), 0)} | {v.get('first_call_s', 0):.1f} | {up} | "
                             f"{v.get('status')} |")
            if not g.get("variants"):
                lines.append(f"| {g['student']} | {g['group']} | | | | | {g.get('status')} |")

    sa = secs.get("sanity_run", {})
    lines += ["", "## 3. Sanity run and projection", "", f"`{sa.get('command', '')}`", "",
              f"Teacher: {sa.get('teacher')}; data: {sa.get('data')}."]
    m = sa.get("metrics") or {}
    if m:
        lines.append(f"Steps per epoch {m.get('steps_per_epoch')}, epochs {m.get('epochs')}; img/s in the last "
                     f"epoch {_cell(m.get('img_per_s_last_epoch'), 0)}; held-out evaluation "
                     f"{_cell(m.get('eval_seconds'), 2)} s for n = {m.get('eval_n')}; training "
                     f"{m.get('train_seconds')} s.")
    pr = sa.get("projection") or {}
    if pr:
        lines.append(f"Paper recipe (`{pr.get('recipe')}`): {pr.get('epochs')} epochs x {pr.get('steps_per_epoch')} "
                     f"steps of batch {pr.get('batch')}, {pr.get('evaluations')} evaluations of "
                     f"{pr.get('eval_n')} images (PGD-{pr.get('eval_pgd_steps')}), about "
                     f"{pr.get('eval_seconds_total', 0) / 3600:.2f} h of them.")
        for key in ("wrn34_10_teacher", "small_teacher"):
            p = pr.get(key)
            if p:
                where = "on this GPU" if gpu.get("name") else "on this machine (dry run: toy sizes, not a projection)"
                lines.append(f"- {key}: **{_cell(p['hours'], 1)} h** {where} ({p['what']}"
                             f"{', step variant ' + p['step_variant'] if 'step_variant' in p else ''})")

    ev = secs.get("export_verify", {})
    lines += ["", "## 4. Export and verify (torch runtime)", ""]
    if ev.get("export"):
        par = ev["export"].get("parity") or {}
        lines.append(f"`{ev['export'].get('command')}`: exit {ev['export'].get('rc')}, "
                     f"{ev['export'].get('seconds')} s; parity {json.dumps(par)[:300]}")
    if ev.get("verify"):
        v = ev["verify"]
        lines += ["", f"`{v.get('command')}`: exit {v.get('rc')}, {v.get('seconds')} s; n = {v.get('n')}, clean "
                  f"{v.get('clean_acc')}, robust {v.get('robust_acc')}, runtime {json.dumps(v.get('artifact'))}",
                  f"attacks: {json.dumps(v.get('attacks'))[:600]}", f"timing: {json.dumps(v.get('timing'))}"]

    env = secs.get("environment", {})
    lines += ["", "## 5. Environment", "",
              f"Needed beyond torch: {', '.join(env.get('needs', []))}.",
              f"Missing or broken here: {', '.join(env.get('missing_packages', [])) or 'none'}.",
              f"Brought as wheels: {', '.join((rep.get('wheels') or {}).get('installed', [])) or 'none'}.",
              f"Versions: {json.dumps(ver)}", f"torch settings: {json.dumps(rep.get('torch_settings'))}"]
    if gpu.get("nvidia_smi"):
        lines += ["", "```", gpu["nvidia_smi"], "```"]
    return "\n".join(lines) + "\n"


# ---- main ----------------------------------------------------------------------------------------------------------


SECTION_ORDER = ("environment", "cuda_tests", "distill_step", "sanity_run", "export_verify", "distill_step_compiled")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "gpu_check",
                   help="folder of gpu_check.json, gpu_check.md and gpu_check.log")
    p.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU (about a minute)")
    p.add_argument("--published-rslad", type=Path, default=None, metavar="DIR",
                   help="a zibojia/RSLAD checkout: also time the published RSLAD step itself beside rkd's and "
                        "the reference's (left out without it)")
    p.add_argument("--published-ard", type=Path, default=None, metavar="DIR",
                   help="a goldblum/AdversariallyRobustDistillation checkout: also time the published ARD step "
                        "itself beside rkd's and the reference's (left out without it)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for everything; the script stops itself there (default 460, dry run 150)")
    p.add_argument("--sections", default=",".join(SECTION_ORDER), help="comma-separated subset to run")
    p.add_argument("--wheels", type=Path, default=None, help="install the wheels in this folder first (--no-index)")
    p.add_argument("--needs", action="store_true", help="list the packages needed beyond torch and exit")
    p.add_argument("--fetch-wheels", type=Path, default=None, metavar="DIR",
                   help="download the wheels a bare CUDA image lacks into DIR and exit")
    p.add_argument("--fetch", default=",".join(WHEELS), help="the packages --fetch-wheels downloads")
    p.add_argument("--python-version", default="3.12", help="the GPU machine's Python, for --fetch-wheels")
    return p.parse_args(argv)


def command_line() -> str:
    exe = Path(sys.executable)
    with contextlib.suppress(ValueError):
        exe = exe.relative_to(Path.cwd())
    return shlex.join([str(exe), *sys.argv])


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.needs:
        have = package_versions()
        for dist, _ in NEEDS:
            print(f"{dist:20s} {have[dist] or 'MISSING'}{'  (brought as a wheel)' if dist in WHEELS else ''}")
        return 0
    if args.fetch_wheels:
        fetch_wheels(args.fetch_wheels, [n for n in args.fetch.split(",") if n], args.python_version)
        return 0
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(tempfile.gettempdir()) / "rkd-inductor-cache"))

    budget = args.budget or (150.0 if args.dry_run else 460.0)
    sizes = dry_sizes(budget) if args.dry_run else full_sizes(budget)
    wanted = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(SECTION_ORDER))
    if unknown:
        raise SystemExit(f"unknown sections {unknown}; choose from {', '.join(SECTION_ORDER)}")
    report = Report(args.out, {
        "benchmark": REPORT_NAME, "mode": "dry-run (toy sizes, CPU)" if args.dry_run else "full",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "command": command_line(),
        "budget_s": budget, "wheels": None,
        "notes": [
            "Data are synthetic (rkd.data.synthetic): no CIFAR-10 and no network on the GPU machine.",
            "Step benchmark: untrained models from rkd's registry (WRN-34-10 teacher, full-width students); a "
            "step's cost depends on neither weights nor pixels. No WRN-34-10 teacher is committed.",
            "Sanity run: the committed small teacher (ResNet-18 width 0.25, trained on CIFAR-10 on a CPU), "
            "synthetic data; its accuracy means nothing, its step rate and evaluation time are the point.",
            "fp32 means autocast off: cuDNN convolutions then run in TF32, torch's default (torch_settings); "
            "bf16 is the training loop's amp: auto on CUDA.",
            "adv_path knobs are set explicitly (reconstruction: " + json.dumps(RECONSTRUCTION) + "; candidate: "
            + json.dumps(CANDIDATE) + ").",
        ],
        "sections": {name: {"status": "pending" if name in wanted else "not requested"} for name in SECTION_ORDER},
    })
    report.log(f"gpu_check {report.data['mode']}, budget {budget:.0f} s, out {args.out}")
    if args.wheels:  # before torch, pydantic or rkd are imported
        try:
            report.data["wheels"] = install_wheels(args.wheels)
            report.log(f"wheels: {', '.join(report.data['wheels']['installed'])}")
        except (OSError, subprocess.CalledProcessError) as e:
            report.data["wheels"] = {"folder": str(args.wheels), "installed": [], "error": str(e)}
            report.log(f"wheels: install failed: {e}")
    sys.path[:0] = [str(REPO / "toolchain"), str(BENCH_DIR)]

    def on_deadline() -> None:
        report.log("budget reached: stopping, writing what there is")
        CHILDREN.kill_all()
        with report.lock:
            report.data["stopped"] = f"budget of {budget:.0f} s reached"
            for sec in report.data["sections"].values():
                if sec.get("status") in ("running", "pending"):
                    sec["status"] = "skipped: time (stopped at the budget)"
            with contextlib.suppress(Exception):
                report.write()
        os._exit(3)

    watchdog = threading.Timer(max(1.0, budget - report.elapsed()), on_deadline)
    watchdog.daemon = True
    watchdog.start()

    import torch

    ctx = StepContext(sizes=sizes, device=torch.device(sizes.device), published_rslad=args.published_rslad,
                      published_ard=args.published_ard)
    work = Path(tempfile.mkdtemp(prefix="rkd-gpu-check-"))
    deadlines = {name: frac * budget for name, frac in sizes.deadlines}
    write_margin = 8.0 if not args.dry_run else 3.0
    deadlines["environment"] = min(40.0, deadlines["cuda_tests"])
    deadlines["distill_step_compiled"] = budget - write_margin
    secs = report.data["sections"]

    def run(name: str, fn: Callable[[dict[str, Any], float], None]) -> None:
        sec = secs[name]
        if name not in wanted:
            return
        deadline = deadlines[name]
        if deadline - report.elapsed() < 2.0:
            sec["status"] = "skipped: time"
            report.write()
            return
        sec["status"] = "running"
        start = time.monotonic()
        report.log(f"== {name} (deadline {deadline:.0f} s)")
        try:
            fn(sec, deadline)
            if sec["status"] == "running":
                sec["status"] = "ok"
        except Exception as e:
            sec["status"] = f"failed: {type(e).__name__}: {str(e)[:300]}"
            sec["traceback"] = traceback.format_exc()[-4000:]
            report.log(sec["traceback"])
        sec["seconds"] = round(time.monotonic() - start, 1)
        report.log(f"== {name}: {sec['status']} ({sec['seconds']} s)")
        report.write()

    run("environment", lambda sec, d: section_environment(report, sizes, sec, d))
    run("cuda_tests", lambda sec, d: section_cuda_tests(report, sizes, sec, d))
    run("distill_step", lambda sec, d: section_distill_step(report, ctx, sec, d))
    run("sanity_run", lambda sec, d: section_sanity(report, ctx, sec, d, work, secs["distill_step"]))
    run("export_verify", lambda sec, d: section_export_verify(report, ctx, sec, d, work, secs["sanity_run"]))
    run("distill_step_compiled", lambda sec, d: section_compiled(report, ctx, sec, d))
    watchdog.cancel()
    report.write()
    report.log(f"wrote {args.out / (REPORT_NAME + '.json')} and .md")
    failed = [n for n, s in secs.items() if str(s.get("status", "")).startswith("failed")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
