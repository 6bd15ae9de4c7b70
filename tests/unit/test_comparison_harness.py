"""benchmarks/method_comparison/run.py: which parts are complete, and what adding AutoAttack to finished parts runs."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

RUN_PY = Path(__file__).resolve().parents[2] / "benchmarks" / "method_comparison" / "run.py"


@pytest.fixture(scope="module")
def harness() -> ModuleType:
    spec = importlib.util.spec_from_file_location("method_comparison_run", RUN_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def cfg(harness: ModuleType, tmp_path: Path) -> Any:
    """The smoke settings on seeds 0-2 with AutoAttack asked of seeds 0 and 1, results in a temporary folder."""
    cfg = harness.Settings.load(harness.CONFIG, smoke=True)
    cfg.raw["results_dir"] = str(tmp_path)
    cfg.raw["seeds"] = [0, 1, 2]
    cfg.raw["eval"]["autoattack_seeds"] = [0, 1]
    return cfg


def record(attacks: dict[str, tuple[float, int]]) -> dict[str, Any]:
    return {"eval": {"attacks": {k: {"acc": acc, "n": n} for k, (acc, n) in attacks.items()}}}


def test_autoattack_is_its_own_command_on_its_own_state(harness: ModuleType, cfg: Any) -> None:
    parts = {p.id: p for p in harness.build_plan(cfg)}
    aa, aa_n = cfg["eval"]["autoattack"], cfg["eval"]["autoattack_n"]["r18"]
    steps = harness.steps_of(cfg, parts["r18-ard-s1"])
    assert [s.name for s in steps] == ["distill", "eval", "eval_aa"]
    assert aa not in steps[1].args[steps[1].args.index("--attacks") + 1]
    last = steps[2].args
    assert last[last.index("--attacks") + 1] == aa and last[last.index("--n") + 1] == str(aa_n)
    assert last[last.index("--aa-state") + 1].endswith(f"eval-aa-n{aa_n}.aa-state")  # a state per n
    # the same part before AutoAttack was asked of its seed: the same first two commands, so asking for it later
    # finds them recorded as done and runs only the AutoAttack command
    cfg.raw["eval"]["autoattack_seeds"] = [0]
    before = harness.steps_of(cfg, {p.id: p for p in harness.build_plan(cfg)}["r18-ard-s1"])
    assert [s.text for s in before] == [s.text for s in steps[:2]]


def test_a_result_without_the_asked_autoattack_is_incomplete(harness: ModuleType, cfg: Any) -> None:
    parts = {p.id: p for p in harness.build_plan(cfg)}
    aa, aa_n = cfg["eval"]["autoattack"], cfg["eval"]["autoattack_n"]["r18"]
    part, other_seed = parts["r18-ard-s1"], parts["r18-ard-s2"]
    assert harness.lacking(cfg, part, None) == "not run"
    assert "not run" in harness.lacking(cfg, part, record({"clean": (0.5, 32)}))
    assert f"n = {aa_n // 2}, not {aa_n}" in harness.lacking(cfg, part, record({aa: (0.1, aa_n // 2)}))
    assert harness.lacking(cfg, part, record({aa: (0.1, aa_n)})) is None
    assert harness.lacking(cfg, other_seed, record({"clean": (0.5, 32)})) is None  # not asked of seed 2

    path = Path(cfg["results_dir"]) / "r18-ard-s1.json"
    assert not harness.is_done(cfg, part)
    path.write_text(json.dumps(record({"clean": (0.5, 32)})))
    assert not harness.is_done(cfg, part)
    path.write_text(json.dumps(record({"clean": (0.5, 32), aa: (0.1, aa_n)})))
    assert harness.is_done(cfg, part)


def test_table_cells_leave_out_evaluations_on_another_n(harness: ModuleType) -> None:
    results = {0: record({"aa": (0.10, 1000)}), 1: record({"aa": (0.30, 200)}), 2: record({"aa": (0.20, 1000)})}
    assert harness.row_stats(results, ["aa"], {"aa": 1000}) == {"aa": [(0, 0.10), (2, 0.20)]}
    assert harness.row_stats(results, ["aa"]) == {"aa": [(0, 0.10), (1, 0.30), (2, 0.20)]}


def test_a_recollected_part_keeps_the_per_class_section_of_the_same_evaluation(harness: ModuleType) -> None:
    data = {"dataset": "cifar10", "n": 1000, "indices_sha256": "a"}
    previous = {"eval": {"checkpoint_sha256": "c1", "data": data, "by_class": {"most_predicted": 6}}}
    assert harness.same_checkpoint_by_class(previous, {"model": {"sha256": "c1"}, "data": data}) == {
        "most_predicted": 6}
    assert harness.same_checkpoint_by_class(previous, {"model": {"sha256": "c2"}, "data": data}) is None  # retrained
    assert harness.same_checkpoint_by_class(previous, {"model": {"sha256": "c1"}, "data": data | {"n": 500}}) is None
    assert harness.same_checkpoint_by_class(None, {"model": {"sha256": "c1"}, "data": data}) is None


def test_a_cell_over_fewer_seeds_than_its_row_says_which(harness: ModuleType) -> None:
    results = {s: record({"aa": (0.1, 1000)}) for s in (0, 1, 2)}
    assert harness.fewer_seeds([(0, 0.1), (2, 0.2)], results) == " (seeds 0,2)"
    assert harness.fewer_seeds([(0, 0.1), (1, 0.1), (2, 0.2)], results) == ""
    assert harness.fewer_seeds([(0, 0.1)], results) == ""  # one seed: pct() marks it with a dagger


def test_paired_cells_subtract_by_seed_and_count_the_seeds_ahead(harness: ModuleType) -> None:
    ours = {0: record({"pgd20": (0.10, 1000)}), 1: record({"pgd20": (0.12, 1000)}), 2: record({"pgd20": (0.2, 1000)})}
    theirs = {0: record({"pgd20": (0.11, 1000)}), 1: record({"pgd20": (0.08, 1000)})}  # seed 2 not finished
    entry, cells = harness.paired_cells(ours, theirs, ["pgd20"], None, "wins")
    assert entry["seeds"] == [0, 1]
    assert entry["pgd20"]["per_seed"] == pytest.approx({0: -0.01, 1: 0.04})
    assert entry["pgd20"]["wins"] == 1
    assert cells == ["+1.5 ± 3.5 (1/2)"]
    # an evaluation on another n is not paired with one on the configured n
    entry, cells = harness.paired_cells(ours, theirs, ["pgd20"], {"pgd20": 500}, "wins")
    assert cells == ["–"] and "pgd20" not in entry


def test_a_variant_is_the_default_only_when_its_recipe_is(harness: ModuleType) -> None:
    """The 4x table lets path_kl_linear_sum stand for the default row: true only while the two recipes validate
    to the same thing; the 192-step table pins its default row to the reconstruction, which no variant is."""
    four_x = harness.Settings.load(harness.HERE / "comparison-4x.yaml", smoke=False)
    variants = {v: four_x.fill(items) for v, items in four_x["ablations"]["variants"].items()}
    assert harness.is_default_adv_path(four_x, "r18", variants["path_kl_linear_sum"])
    assert not harness.is_default_adv_path(four_x, "r18", variants["path_kl_uniform_sum"])
    assert not harness.is_default_adv_path(four_x, "r18", [*variants["path_kl_linear_sum"], "student.train.lr=0.3"])
    pinned = harness.Settings.load(harness.CONFIG, smoke=False)
    linear = pinned.fill(pinned["ablations"]["variants"]["path_kl_linear_sum"])
    assert not harness.is_default_adv_path(pinned, "r18", linear)
    assert harness.is_default_adv_path(pinned, "r18", ["student.method.preset=reconstruction"])
