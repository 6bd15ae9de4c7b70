"""Progress of long evaluation work: the library's sink protocol, the CLI's console display, and pyautoattack's
stdout routed into the log."""

from __future__ import annotations

import io
import logging

import pytest
from rich.console import Console

from rkd.data import load_dataset
from rkd.errors import UsageError
from rkd.progress import active, labelled, reporting, unit
from rkd.testing import train_tiny_classifier
from rkd.verify.suite import evaluate_robustness


class Recorder:
    """A :class:`rkd.progress.WorkProgress` that keeps every call."""

    def __init__(self) -> None:
        self.units: list[dict] = []

    def start(self, label: str, total: int) -> None:
        self.units.append({"label": label, "total": total, "steps": [], "ended": False})

    def advance(self, done: int, robust: int) -> None:
        self.units[-1]["steps"].append((done, robust))

    def end(self) -> None:
        self.units[-1]["ended"] = True


def _check_units(units: list[dict]) -> None:
    for u in units:
        done = [d for d, _ in u["steps"]]
        assert u["ended"]
        assert done == sorted(done) and len(set(done)) == len(done)  # monotone
        assert done[-1] == u["total"]  # reaches the unit's total
        assert all(0 <= r <= d for d, r in u["steps"])
        robust = [r for _, r in u["steps"]]
        assert robust == sorted(robust)  # robust so far only grows while more samples finish


def test_the_suite_reports_monotone_counts_reaching_n() -> None:
    model = train_tiny_classifier()
    data = load_dataset("synthetic", "test", n=50)
    x, y = data.to_float(), data.y
    rec = Recorder()
    res = evaluate_robustness(model, x, y, attacks="fgsm,pgd3r2", eps=8 / 255, alpha=2 / 255, batch_size=16,
                              progress=rec)
    assert [u["label"] for u in rec.units] == ["fgsm", "pgd3r2 restart 1/2", "pgd3r2 restart 2/2"]
    _check_units(rec.units)
    clean = res.outcomes["clean"].correct
    assert rec.units[0]["total"] == int(clean.sum())  # the attacks run on the clean-correct samples
    assert rec.units[0]["steps"][-1][1] == int(res.outcomes["fgsm"].correct.sum())
    first = rec.units[1]["steps"][-1][1]
    assert rec.units[2]["total"] == first  # a restart attacks the samples still robust
    assert rec.units[2]["steps"][-1][1] == int(res.outcomes["pgd3r2"].correct.sum())


def test_an_installed_sink_is_seen_by_nested_work_and_removed_after() -> None:
    rec = Recorder()
    assert not isinstance(active(), Recorder)
    with reporting(rec):
        with unit("job", 3) as sink:
            sink.advance(3, 1)
        with reporting(None):  # None keeps the sink in force
            assert active() is rec
        with labelled("engine "), labelled("curve "), unit("pgd5", 2) as sink:
            sink.advance(2, 2)
    assert not isinstance(active(), Recorder)
    assert rec.units == [{"label": "job", "total": 3, "steps": [(3, 1)], "ended": True},
                         {"label": "engine curve pgd5", "total": 2, "steps": [(2, 2)], "ended": True}]


def test_without_a_terminal_progress_is_a_plain_line_every_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    from rkd.cli import _common

    clock = iter(range(0, 1000, 10))  # every call to the clock moves 10 s on
    monkeypatch.setattr("time.monotonic", lambda: float(next(clock)))
    buf = io.StringIO()
    display = _common.AttackProgress(Console(file=buf, force_terminal=False, width=200), interval=25.0)
    display.start("pgd20", 100)  # t = 0
    for done in range(10, 101, 10):  # t = 10, 20, ..., 100
        display.advance(done, done // 2)
    display.end()
    lines = buf.getvalue().splitlines()
    assert len(lines) == 3  # at t = 30, 60, 90: not every batch, and not after the last one
    assert lines[0].startswith("pgd20: 30/100 samples, robust 15/30, 30 s, eta 70 s")
    assert "\x1b" not in buf.getvalue()  # no terminal control codes in a log


def test_the_progress_interval_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from rkd.cli._common import PROGRESS_INTERVAL_ENV, progress_interval

    monkeypatch.delenv(PROGRESS_INTERVAL_ENV, raising=False)
    assert progress_interval() == 30.0
    monkeypatch.setenv(PROGRESS_INTERVAL_ENV, "5")
    assert progress_interval() == 5.0
    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv(PROGRESS_INTERVAL_ENV, bad)
        with pytest.raises(UsageError, match=PROGRESS_INTERVAL_ENV):
            progress_interval()


def test_pyautoattack_prints_go_to_the_log_not_stdout(capsys: pytest.CaptureFixture[str],
                                                     caplog: pytest.LogCaptureFixture) -> None:
    from rkd.attacks.library_output import stdout_to_log

    with caplog.at_level(logging.INFO, logger="rkd.attacks.autoattack"), stdout_to_log():
        print("square attack may not work properly for non-square image.")
        print("partial", end="")
    assert capsys.readouterr().out == ""
    logged = [r.getMessage() for r in caplog.records]
    assert "AutoAttack: square attack may not work properly for non-square image." in logged
    assert "AutoAttack: partial" in logged


def test_autoattack_reports_progress_and_keeps_stdout_clean(capsys: pytest.CaptureFixture[str],
                                                           caplog: pytest.LogCaptureFixture,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("pyautoattack")
    from pyautoattack.square import SquareAttack

    from rkd.attacks import run_autoattack

    perturb = SquareAttack.perturb

    def chatty(self, *args, **kwargs):  # what the library's verbose paths do
        print("square attack may not work properly for non-square image.")
        return perturb(self, *args, **kwargs)

    monkeypatch.setattr(SquareAttack, "perturb", chatty)
    model = train_tiny_classifier()
    data = load_dataset("synthetic", "test", n=24)
    rec = Recorder()
    with caplog.at_level(logging.INFO, logger="rkd.attacks.autoattack"), reporting(rec):
        res = run_autoattack(model, data.to_float(), data.y, eps=8 / 255, attacks=["square"], batch_size=8)
    assert capsys.readouterr().out == ""
    assert any("non-square" in r.getMessage() for r in caplog.records)
    assert [u["label"] for u in rec.units] == ["autoattack square"]
    _check_units(rec.units)
    assert rec.units[0]["total"] == int(res.clean.sum())
    assert rec.units[0]["steps"][-1][1] == int(res.robust.sum())


def test_inside_another_live_display_the_attack_bar_does_not_fail() -> None:
    """A held-out evaluation inside a training bar: Rich before 14 refuses a second live display (LiveError), so
    the attack bar then stays quiet; newer Rich nests it. Either way the work goes on."""
    from rich.progress import Progress

    from rkd.cli._common import AttackProgress

    buf = io.StringIO()
    con = Console(file=buf, force_terminal=True, width=120)
    outer = Progress(console=con)
    outer.start()
    try:
        display = AttackProgress(con, interval=0.0)
        display.start("pgd10", 10)
        display.advance(5, 2)
        display.end()
    finally:
        outer.stop()
    display.start("pgd10", 10)  # alone, it shows its bar
    display.advance(5, 2)
    display.end()
    assert "pgd10" in buf.getvalue() and "robust 2/5" in buf.getvalue()
