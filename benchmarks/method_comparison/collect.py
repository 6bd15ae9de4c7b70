"""Collecting a finished part's reports into its result JSON: attack accuracies, per-class breakdown, timings,
peak memory and the recipe it ran."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks.method_comparison.plan import Part, Step, part_dir
from benchmarks.method_comparison.settings import REPO, SCHEMA_VERSION, Settings, machine
from rkd.config import apply_overrides


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
            "attacks": {name: {"per_class": bc["acc"][name],
                               "without_most_predicted": bc["without_most_predicted"][name]}
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
                       "teacher_sha256":
                           hashlib.sha256((REPO / cfg["teacher"]["checkpoint"]).read_bytes()).hexdigest()},
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


def step_peak_rss(folder: Path, name: str) -> int | None:
    """The peak resident memory (MiB) of a finished step's process, from its marker (None: not recorded)."""
    marker = REPO / folder / ".steps" / f"{name}.json"
    return json.loads(marker.read_text()).get("peak_rss_mib") if marker.exists() else None
