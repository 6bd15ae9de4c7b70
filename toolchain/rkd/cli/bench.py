"""Time every runtime a bundle can run here: batch-1 latency (p50/p90) and throughput at a batch size."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from rkd.atomic import check_output_path
from rkd.cli._common import handle_errors, out


def _ratio(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if value >= 0.1 else f"{value:.2g}"


def render_bench(report: Any, json_path: Path | None) -> None:
    """The Rich table of a :class:`rkd.deploy.bench.BenchReport` (fits 100 columns), skipped runtimes and the
    settings below it."""
    batch = report.batch_size
    table = Table(title=f"{report.bundle}: {report.model or 'model'}, input {'x'.join(map(str, report.input_shape))}"
                        f"; batch-1 latency, batch-{batch} throughput", box=box.SIMPLE_HEAD)
    table.add_column("runtime", no_wrap=True)
    table.add_column("file", overflow="fold", max_width=24)
    for col in ("p50 ms", "p90 ms", "mean ms", "img/s", "lat x", "thr x"):
        table.add_column(col, justify="right", no_wrap=True)
    skipped = []
    for name, row in report.runtimes.items():
        file = escape(Path(row.file).name) if row.file else "-"
        if not row.measured:
            skipped.append(row)
            table.add_row(escape(name), file, "[dim]skipped[/]", "", "", "", "", "")
            continue
        lat, thr, vs = row.latency_ms, row.throughput, row.vs_baseline or {}
        table.add_row(escape(name), file, f"{lat['p50']:.3f}", f"{lat['p90']:.3f}", f"{lat['mean']:.3f}",
                      f"{thr['median']:,.0f}", _ratio(vs.get("latency_speedup")), _ratio(vs.get("throughput_ratio")))
    out.print(table)
    for row in skipped:
        out.print(f"[yellow]skipped[/] {escape(row.name)}: {escape(str(row.reason))}", highlight=False)
    base = (f"x: vs {report.baseline} in this run (>1: faster)" if report.baseline
            else "no ratios: onnx-fp32 did not run")
    out.print(f"{report.rounds} interleaved rounds after {report.warmup} warm-up, {report.threads} thread(s), "
              f"{report.device}; {base}", highlight=False)
    if json_path is not None:
        out.print(f"report: {json_path}", highlight=False)


def bench(
    bundle: Annotated[Path, typer.Argument(metavar="BUNDLE", help="Bundle folder (manifest.json and its files).",
                                           show_default=False)],
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per call of the throughput "
                                            "measurement.")] = 64,
    iters: Annotated[Optional[int], typer.Option("--iters", help="Timed rounds \\[default: 30].",
                                                 show_default=False)] = None,
    seconds: Annotated[Optional[float], typer.Option("--seconds", help="Instead of --iters: rounds until this "
                                                     "many seconds have passed (at least 3).",
                                                     show_default=False)] = None,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed rounds first.")] = 3,
    threads: Annotated[Optional[int], typer.Option("--threads", help="CPU threads of torch and ONNX Runtime "
                                                   "\\[default: torch's, i.e. the cores].",
                                                   show_default=False)] = None,
    runtime: Annotated[Optional[list[str]], typer.Option(
        "--runtime", help="Only these (repeatable): torch, onnx-fp32, onnx-int8, onnx-int8-ptq, trt-int8, "
        "trt-fp16, trt-fp32; onnx-fp32, the baseline, always runs. A named runtime that cannot run here is an "
        "error \\[default: every runtime of the bundle; those that cannot run here are listed as skipped].",
        show_default=False)] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda[:N] for torch and ONNX Runtime; TensorRT engines run "
                                        "on the GPU.")] = "cpu",
    checkpoint: Annotated[Optional[Path], typer.Option(
        "--checkpoint", help="Float checkpoint for the torch row \\[default: the source checkpoint the manifest "
        "records]; it must be the one the bundle was exported from.", show_default=False)] = None,
    seed: Annotated[int, typer.Option(help="Seeds the random input images.")] = 0,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the report as JSON here.",
                                                      show_default=False)] = None,
) -> None:
    """Time every runtime a bundle can run here (torch, ONNX Runtime FP32/INT8, TensorRT): batch-1 latency
    (p50/p90/mean) and throughput at --batch-size, interleaved round by round, with ratios to ONNX Runtime FP32.

    Every file's sha256 is checked first, as rkd verify does: a changed bundle is refused (exit 2). Exit codes: 0
    measured, 2 usage error or changed bundle, 3 a runtime named with --runtime cannot run here, 4 internal
    error.
    """
    with handle_errors():
        from rkd.deploy.bench import bench_bundle

        check_output_path(json_path, "--json", folder=False)
        report = bench_bundle(bundle, batch_size=batch_size, warmup=warmup, iters=iters, seconds=seconds,
                              threads=threads, runtimes=runtime, device=device, checkpoint=checkpoint, seed=seed)
        if json_path is not None:
            report.write_json(json_path)
        render_bench(report, json_path)
