"""The ``table`` command: table.md and table.json from the parts' result JSONs (setup, main, paired,
ablations, deployment and run tables)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from benchmarks.method_comparison.cells import (
    attack_columns,
    autoattack_n,
    cell,
    distill_seconds,
    is_default_adv_path,
    paired_cells,
    pct,
    pct1,
    table_row,
    table_setup,
)
from benchmarks.method_comparison.plan import (
    Part,
    ablation_autoattack,
    build_plan,
    lacking,
    per_student,
    per_student_text,
    pgd_attack,
    read_result,
    train_part_id,
)
from benchmarks.method_comparison.runner import say
from benchmarks.method_comparison.settings import REPO, SCHEMA_VERSION, Settings, label
from rkd.atomic import atomic_write_text


def table_main(cfg: Settings, results: dict[str, dict[str, Any]], tj: dict[str, Any]) -> list[str]:
    """One table per student: a row per method, a column per attack."""
    columns, seeds, ev, pgd = attack_columns(cfg), list(cfg["seeds"]), cfg["eval"], pgd_attack(cfg)
    plan = {p.id: p for p in build_plan(cfg)}
    lines: list[str] = []
    for student, spec in cfg["students"].items():
        aa_n = per_student(ev["autoattack_n"], student)
        own = cfg.fill(spec.get("overrides") or [])
        lines += [f"## {student}: {spec['name']} width {spec['width']}", "",
                  *([f"Trained with base.yaml plus `{' '.join(own)}` (this student's own settings).", ""]
                    if own else []),
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
