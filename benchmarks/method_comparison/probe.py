"""The ``probe`` command: measure the step, evaluation and deployment costs behind the estimates (probe.json)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks.method_comparison.collect import read_jsonl
from benchmarks.method_comparison.plan import Step, eval_attacks, pgd_attack, student_overrides
from benchmarks.method_comparison.runner import run_step, say
from benchmarks.method_comparison.settings import REPO, SCHEMA_VERSION, Settings, machine
from rkd.atomic import atomic_write_text


def probe_distill(cfg: Settings, student: str, name: str, overrides: list[str], folder: Path,
                  steps: int) -> dict[str, Any]:
    """Run ``steps`` real training steps of one configuration; the step time excludes the first step."""
    recipe = cfg.recipe()
    batch = int(recipe["data"]["batch_size"])
    run = folder / f"{student}-{name}"
    sets = [*cfg.recipe_overrides, *student_overrides(cfg, student), f"data.train_subset={steps * batch}",
            "student.train.epochs=1", "student.train.eval_n=0",
            "student.train.log_every=1", "student.train.checkpoint_every_steps=null", *overrides]
    if cfg.smoke:
        sets = [s for s in sets if not s.startswith("data.train_subset=")]
    step = Step(f"probe-{student}-{name}", ["distill", cfg["recipe"], "--teacher", cfg["teacher"]["checkpoint"],
                                          "--out", str(run), *cfg.data_args(),
                                          *[a for o in sets for a in ("--set", o)]])
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


def _probe_training(cfg: Settings, out: dict[str, Any], folder: Path) -> None:
    """A few training steps of every (student, method) and of every ablation variant, into ``out``."""
    pc = cfg["probe"]
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


def _probe_evaluation(cfg: Settings, out: dict[str, Any], folder: Path) -> tuple[str, str]:
    """The evaluation cost per student into ``out``: measured on a reference checkpoint, scaled for the others by
    the attack cost of their probe runs; return the measured student and its checkpoint."""
    pc = cfg["probe"]
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
                                              str(cfg["eval"]["n"]), "--attacks", f"clean,{pgd}",
                                              "--report", str(report)])
        run_step(step, folder)
        att = json.loads((REPO / report).read_text())["attacks"]
        cost = att[pgd]["seconds"] / max(1, att["clean"]["correct"])
        out["eval"][student] = {"scaled_from": measured, "ratio": round(cost / ref_cost, 3),
                                "scale": f"{pgd} seconds per attacked image, this student's probe pgd_at run over "
                                         f"{measured}'s reference", pgd: att[pgd], "clean": att["clean"],
                                "command": step.text}
        say(f"probe eval {student}: attack cost x{cost / ref_cost:.2f} of {measured}")
    return measured, reference[measured]


def _probe_deploy(cfg: Settings, out: dict[str, Any], folder: Path, measured: str, ckpt: str) -> None:
    """PTQ (export, calibration, float vs INT8 check), QAT steps and verify on the measured reference, into ``out``."""
    pc = cfg["probe"]
    data = cfg["data"]
    # deployment: PTQ (export, calibration, float vs INT8 check), QAT steps, verify; on the measured reference
    bundle = folder / "bundle"
    dep = cfg["deploy"]
    recipe = cfg.recipe()
    batch = int(recipe["data"]["batch_size"])
    quant = Step("probe-ptq", ["quantize", ckpt, "--calib-data", data, *cfg.data_args(),
                               "--calib-n", str(dep["calib_n"]),
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


def probe(cfg: Settings) -> int:
    """Measure what the estimates need: a few training steps per (student, method) and per ablation, one small
    evaluation per student (on a trained reference checkpoint when there is one), PTQ, QAT and verify."""
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
    _probe_training(cfg, out, folder)
    measured, ckpt = _probe_evaluation(cfg, out, folder)
    _probe_deploy(cfg, out, folder, measured, ckpt)
    out["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    atomic_write_text(REPO / cfg.results_dir / "probe.json", json.dumps(out, indent=1) + "\n")
    say(f"wrote {cfg.results_dir / 'probe.json'}")
    return 0
