"""The ``rkd`` Typer application: one small module per command."""

from __future__ import annotations

from typing import Annotated

import typer

from rkd.cli._common import STATE, setup_logging

app = typer.Typer(
    name="rkd",
    help="Robust distillation of mobile image classifiers, INT8 export, and robustness verification of the "
    "exported engine.\n\nExit codes: 0 success, 1 gate failed, 2 usage or recipe error, 3 backend or hardware "
    "missing, 4 internal error.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"rkd {version('rkd')}")
        raise typer.Exit(0)


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks instead of one-line errors.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log library messages (info level).")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    STATE["debug"] = debug
    setup_logging(verbose)


def _register() -> None:
    from rkd.cli import bench as bench_cli
    from rkd.cli import distill, env, evaluate, teacher
    from rkd.cli import export as export_cli
    from rkd.cli import quantize as quantize_cli
    from rkd.cli import run as run_cli
    from rkd.cli import verify as verify_cli

    app.command("run", no_args_is_help=True)(run_cli.run)
    app.command("teacher", no_args_is_help=True)(teacher.teacher)
    app.command("distill", no_args_is_help=True)(distill.distill)
    app.command("eval", no_args_is_help=True)(evaluate.eval_command)
    app.command("quantize", no_args_is_help=True)(quantize_cli.quantize)
    app.command("export", no_args_is_help=True)(export_cli.export)
    app.command("verify", no_args_is_help=True)(verify_cli.verify)
    app.command("bench", no_args_is_help=True)(bench_cli.bench)
    app.command("env")(env.env)


_register()


def main() -> None:
    """Console-script entry point."""
    app()
