"""The summary ``rkd run`` prints: one table row per stage and a verdict line, laid out for a terminal of 100
columns. Paths are not split: an artifact is shown relative to the run directory (the table's title), on a line
of its own above the stage's metrics, which wrap at spaces."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from rkd.pipeline.record import RunResult


def metrics_text(metrics: dict[str, Any]) -> str:
    """A stage's metrics as ``key value`` items joined by ``, `` (a gate as ``GATE pass`` or ``GATE FAIL``)."""
    parts = []
    for key, value in metrics.items():
        if key == "gates":
            parts += [f"{g} {'pass' if ok else 'FAIL'}" for g, ok in value.items()]
        elif isinstance(value, float):
            parts.append(f"{key} {value:.3g}")
        elif value is not None:
            parts.append(f"{key} {value}")
    return ", ".join(parts)


def shown_artifact(artifact: str | None, run_dir: Path) -> str:
    """``artifact`` relative to ``run_dir`` when inside it (the title names the run directory), else as given."""
    if not artifact:
        return "-"
    path = Path(artifact)
    return path.relative_to(run_dir).as_posix() if path.is_relative_to(run_dir) else artifact


def run_table(result: RunResult, name: str) -> Table:
    """The stages of ``result`` as a :class:`rich.table.Table` titled with the recipe ``name`` and the run
    directory: one row per stage, its artifact on the first line of the last column and its metrics below."""
    table = Table(title=f"rkd run {name}: {result.run_dir}")
    for col in ("stage", "status", "time"):
        table.add_column(col, justify="right" if col == "time" else "left", no_wrap=True)
    table.add_column("artifact / metrics", overflow="fold")  # wraps at spaces; folds only a path wider than it
    for st in result.stages:
        cell = Text(shown_artifact(st.artifact, result.run_dir))
        metrics = metrics_text(st.metrics)
        if metrics:
            cell.append("\n" + metrics, style="dim")
        table.add_row(st.name, st.status, f"{st.seconds:.1f} s", cell)
    return table


def verdict_text(result: RunResult) -> str | None:
    """The verdict line (Rich markup) of a run with a verify stage, else None."""
    rep = result.report
    if rep is None:
        return None
    verdict = ("[bold green]PASS[/]" if rep.get("passed") else "[bold red]UNRELIABLE[/]"
               if rep.get("verdict") == "unreliable" else "[bold red]FAIL[/]")
    return (f"{verdict}  clean {rep['clean_acc']:.1%}, worst-case robust {rep['robust_acc']:.1%} "
            f"(n={rep['n']}, {rep['norm']} eps={rep['eps_text']}); report: {result.run_dir / 'verify'}")
