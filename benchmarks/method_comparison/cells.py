"""Table cells: percentages over seeds, the attack columns, per-row statistics and paired differences."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from benchmarks.method_comparison.plan import per_student, per_student_text, student_overrides
from benchmarks.method_comparison.settings import Settings, label
from rkd.config import apply_overrides


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




def pct1(value: float) -> str:
    """An accuracy in percent with one decimal."""
    return f"{100 * value:.1f}"
