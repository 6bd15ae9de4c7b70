"""benchmarks/gpu_check.py: its dry run (the GPU check's code paths at toy sizes on the CPU), its stop at the
budget, the wheel slimming, the Markdown of a report with nothing in it, and the package list."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


# A stand-in with the signature of zibojia/RSLAD's rslad_inner_loss (the published file is not part of this
# project): it calls .cuda() as the published code does, which the benchmark must make a no-op on a CPU.
STAND_IN_RSLAD_LOSS = """
import torch

CALLS = []


def rslad_inner_loss(model, teacher_logits, x_natural, y, optimizer, step_size=0.003, epsilon=0.031,
                     perturb_steps=10, beta=6.0):
    CALLS.append((perturb_steps, step_size, epsilon))
    model.eval()
    x_adv = x_natural.detach() + 0.001 * torch.randn(x_natural.shape).cuda().detach()
    model.train()
    optimizer.zero_grad()
    return model(x_adv)
"""


def _stand_in(tmp_path: Path) -> Path:
    folder = tmp_path / "published_rslad"
    folder.mkdir()
    (folder / "rslad_loss.py").write_text(STAND_IN_RSLAD_LOSS)
    return folder


# A stand-in for goldblum/AdversariallyRobustDistillation's main.py (not part of this project): a script whose top
# level parses arguments and loads data (it must not run), and an AttackPGD of the published signature that
# appends its settings to a file (only the class definition is run, with torch, nn and F in scope).
STAND_IN_ARD_MAIN = """
import argparse

raise RuntimeError("the script's top level ran")


class AttackPGD(nn.Module):
    def __init__(self, basic_net, config):
        super(AttackPGD, self).__init__()
        self.basic_net = basic_net
        self.step_size = config['step_size']
        self.epsilon = config['epsilon']
        self.num_steps = config['num_steps']

    def forward(self, inputs, targets):
        with open(CALLS_FILE, "a") as f:
            f.write(f"{self.num_steps} {self.step_size!r} {self.epsilon!r}\\n")
        x = inputs.detach() + torch.zeros_like(inputs).uniform_(-self.epsilon, self.epsilon)
        x.requires_grad_()
        with torch.enable_grad():
            loss = F.cross_entropy(self.basic_net(x), targets, reduction="sum")
        grad = torch.autograd.grad(loss, [x])[0]
        x = torch.clamp(x.detach() + self.step_size * torch.sign(grad), 0.0, 1.0)
        return self.basic_net(x), x
"""


def _stand_in_ard(tmp_path: Path) -> tuple[Path, Path]:
    """(the folder, the file its AttackPGD appends its calls to)."""
    folder, calls = tmp_path / "published_ard", tmp_path / "ard_calls.txt"
    folder.mkdir()
    (folder / "main.py").write_text(STAND_IN_ARD_MAIN.replace("CALLS_FILE", repr(str(calls))))
    return folder, calls


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


@pytest.mark.slow
def test_the_dry_run_runs_every_section_and_writes_json_and_markdown(tmp_path: Path) -> None:
    out = tmp_path / "out"
    ard, ard_calls = _stand_in_ard(tmp_path)
    res = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out),
                          "--published-rslad", str(_stand_in(tmp_path)), "--published-ard", str(ard)], cwd=REPO,
                         env=_env(), capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rep = json.loads((out / "gpu_check.json").read_text())
    md = (out / "gpu_check.md").read_text()
    assert (out / "gpu_check.log").is_file()
    assert {name: s["status"] for name, s in rep["sections"].items()} == {
        name: "ok" for name in ("environment", "cuda_tests", "distill_step", "sanity_run", "export_verify",
                                "distill_step_compiled")}
    assert rep["mode"].startswith("dry-run") and "gpu_check.py --dry-run" in rep["command"]
    tests = rep["sections"]["cuda_tests"]
    assert tests["counts"].get("passed", 0) >= 10 and not tests["counts"].get("failed")
    students = rep["sections"]["distill_step"]["students"]
    assert [k.split()[0] for k in students] == ["resnet18", "mobilenet_v2"]
    for student in students.values():
        assert {"ard/fp32/eager", "ard/bf16/eager", "reference_ard/fp32/research_code",
                "published_ard/fp32/published_code", "published_rslad/fp32/published_code"} <= set(student["variants"])
        for key, v in student["variants"].items():
            assert v["status"] == "ok" and v["rounds"] == 2 and v["seconds"]["median"] > 0, key
            assert v["gflop_per_step"] > 0 and v["gflop_per_second"]["n"] == 2, key
            assert v["gflop_per_second"]["min"] > 0 and "flop_count_error" not in v, key
        ratios = student["ratios"]
        assert ratios["speedup_reference_over_rkd_adv_path_fp32"]["n"] == 2
        for name in ("rslad", "ard"):
            for prec in ("fp32", "bf16"):
                assert ratios[f"speedup_published_over_rkd_{name}_{prec}"]["n"] == 2
            assert ratios[f"time_reference_over_published_{name}"]["n"] == 2
        assert ratios["macs"]["implied"]["ratio"] > 1
    # the published ARD step ran the given AttackPGD (warm-up, FLOP count, 2 rounds, per student) with rkd's settings
    assert ard_calls.read_text().splitlines() == [f"2 {2 / 255!r} {8 / 255!r}"] * 8
    compiled = rep["sections"]["distill_step_compiled"]["groups"]
    assert [g["group"] for g in compiled[-4:]] == ["ard/bf16"] * 2 + ["ard/fp32"] * 2
    assert len(compiled) == 12 and all(g["status"] == "ok" for g in compiled)
    assert rep["sections"]["distill_step_compiled"]["recompile_limit"] >= 12  # no group falls back to eager
    sanity = rep["sections"]["sanity_run"]
    assert sanity["metrics"]["img_per_s_last_epoch"]["median"] > 0
    assert sanity["projection"]["wrn34_10_teacher"]["hours"]["median"] > 0
    ev = rep["sections"]["export_verify"]
    assert ev["export"]["parity"]["top1_agreement"] == 1.0
    assert ev["verify"]["artifact"]["runtime"] == "torch" and ev["verify"]["n"] == 16
    assert "| variant | s/step | img/s | GFLOP/step | GFLOP/s |" in md and "| published_ard/fp32/published_code |" in md
    for heading in ("## 1. CUDA tests", "## 2. The distillation step", "### Compiled attack",
                    "## 3. Sanity run and projection", "## 4. Export and verify", "## 5. Environment"):
        assert heading in md


def test_at_the_budget_it_stops_and_still_writes_its_report(tmp_path: Path) -> None:
    """A section that overruns: the watchdog ends the run at --budget and writes what there is."""
    out = tmp_path / "out"
    code = textwrap.dedent(f"""
        import importlib.util, sys, time
        spec = importlib.util.spec_from_file_location("gpu_check", {str(SCRIPT)!r})
        g = sys.modules["gpu_check"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(g)
        g.section_distill_step = lambda *a: time.sleep(600)
        sys.exit(g.main(["--dry-run", "--budget", "30", "--sections", "distill_step", "--out", {str(out)!r}]))
    """)  # a budget that leaves the section time to start even on a loaded machine (its deadline: 16.5 s)
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(), capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 3, res.stdout + res.stderr
    rep = json.loads((out / "gpu_check.json").read_text())
    assert rep["stopped"].startswith("budget of 30 s") and 29 < rep["elapsed_s"] < 60
    assert rep["sections"]["distill_step"]["status"].startswith("skipped: time")
    assert rep["sections"]["cuda_tests"]["status"] == "not requested"
    assert "STOPPED at the budget" in (out / "gpu_check.md").read_text()


def test_the_published_rslad_step_runs_the_given_code_and_is_left_out_without_it(tmp_path: Path) -> None:
    import torch

    g = _module()
    sys.path[:0] = [str(REPO / "toolchain"), str(REPO / "benchmarks")]  # as main() sets it
    folder = _stand_in(tmp_path)
    assert not [v for v in g.eager_variants(4) if v.kind == "published_rslad"]
    (variant,) = [v for v in g.eager_variants(4, folder) if v.kind == "published_rslad"]
    ctx = g.StepContext(sizes=g.dry_sizes(60.0), device=torch.device("cpu"), published_rslad=folder)
    g.make_benches(ctx, g.Report(tmp_path / "out", {}))
    label = next(iter(ctx.benches))
    step = g.build_step(ctx, label, variant)
    before = [p.detach().clone() for p in ctx.nchw[label].student.parameters()]
    step()
    step()
    calls = sys.modules["published_rslad_loss"].CALLS
    assert calls == [(2, 2 / 255, 8 / 255)] * 2  # rkd's m, step size and eps, passed as the published loop does
    assert all(torch.equal(a, b) for a, b in zip(before, ctx.nchw[label].student.parameters(), strict=True))
    assert torch.Tensor.cuda is not None and torch.randn(1).cuda is not None  # the patch is undone
    ctx.published_rslad = None
    with pytest.raises(ValueError, match="--published-rslad"):
        g.build_step(ctx, label, variant)


def test_the_published_ard_step_runs_the_given_code_and_is_left_out_without_it(tmp_path: Path) -> None:
    import torch

    g = _module()
    sys.path[:0] = [str(REPO / "toolchain"), str(REPO / "benchmarks")]  # as main() sets it
    import _step

    folder, calls = _stand_in_ard(tmp_path)
    assert not [v for v in g.eager_variants(4, _stand_in(tmp_path)) if v.kind == "published_ard"]
    (variant,) = [v for v in g.eager_variants(4, published_ard=folder) if v.kind == "published_ard"]
    assert variant.key == "published_ard/fp32/published_code"
    ctx = g.StepContext(sizes=g.dry_sizes(60.0), device=torch.device("cpu"), published_ard=folder)
    g.make_benches(ctx, g.Report(tmp_path / "out", {}))
    label = next(iter(ctx.benches))
    step = g.build_step(ctx, label, variant)
    before = [p.detach().clone() for p in ctx.nchw[label].student.parameters()]
    step()
    assert _step.count_flops(step) > 0
    # rkd's m, step size and eps, passed in the config dict as the published script does
    assert calls.read_text().splitlines() == [f"2 {2 / 255!r} {8 / 255!r}"] * 2
    assert all(torch.equal(a, b) for a, b in zip(before, ctx.nchw[label].student.parameters(), strict=True))
    ctx.published_ard = None
    with pytest.raises(ValueError, match="--published-ard"):
        g.build_step(ctx, label, variant)
    ctx.published_ard = tmp_path / "missing"
    with pytest.raises(FileNotFoundError, match="--published-ard"):
        g.build_step(ctx, label, variant)


def test_slim_wheel_leaves_out_large_examples_and_their_record_lines(tmp_path: Path) -> None:
    g = _module()
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("pkg/__init__.py", "x = 1\n")
        z.writestr("pkg/examples/weights.pt", b"\0" * (2 << 20))
        z.writestr("pkg/examples/small.py", "y = 2\n")
        z.writestr("pkg-1.0.dist-info/RECORD", "pkg/__init__.py,sha256=a,6\npkg/examples/weights.pt,sha256=b,2\n"
                                               "pkg/examples/small.py,sha256=c,6\npkg-1.0.dist-info/RECORD,,\n")
    assert g.slim_wheel(wheel) == ["pkg/examples/weights.pt"]
    with zipfile.ZipFile(wheel) as z:
        assert sorted(z.namelist()) == ["pkg-1.0.dist-info/RECORD", "pkg/__init__.py", "pkg/examples/small.py"]
        assert "weights.pt" not in z.read("pkg-1.0.dist-info/RECORD").decode()
    assert g.slim_wheel(wheel) == []  # nothing left to leave out


def test_markdown_of_a_report_with_nothing_measured_yet() -> None:
    g = _module()
    md = g.markdown({"mode": "full", "sections": {name: {"status": "pending"} for name in g.SECTION_ORDER}})
    assert md.startswith("# rkd GPU check (full)") and "| distill_step | pending |" in md


def test_needs_lists_every_package_and_what_comes_as_wheels(capsys: pytest.CaptureFixture[str]) -> None:
    g = _module()
    assert g.main(["--needs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines] == [dist for dist, _ in g.NEEDS]
    assert all(("brought as a wheel" in ln) == (ln.split()[0] in g.WHEELS) for ln in lines)
