"""The plan: every part (teacher, main rows, ablations, deployment), the rkd commands of each, and which parts
are complete (their result JSON holds every evaluation asked of them)."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.method_comparison.settings import REPO, Settings, label


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
