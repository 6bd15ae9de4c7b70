"""Cost estimates: minutes per part from the probe's measurements and from finished parts, the wall time of a
plan on N jobs, and the ``plan`` command's listing."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from typing import Any

from benchmarks.method_comparison.plan import (
    Part,
    build_plan,
    eval_attacks,
    is_done,
    lacking,
    per_student,
    pgd_attack,
    read_result,
    student_overrides,
)
from benchmarks.method_comparison.settings import REPO, Settings
from rkd.config import apply_overrides


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
        return seconds / 60, (f"probe (stale: probed with {', '.join(stale)}; rerun `run.py probe`)"
                              if stale else "probe")

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
