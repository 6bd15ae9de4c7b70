"""The CPU's achieved dense matrix-product rate (GFLOP/s, fp32 and bf16): the ceiling a training step's GFLOP/s
is read against.

``torch.mm`` of two N x N matrices (default 4096), one warm-up call, then ``--repeats`` timed calls per dtype;
2 N^3 FLOPs a call. A large GEMM is about the best rate oneDNN/MKL reach on the threads given; a convolution
network's step runs at or below it.

Run::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/matmul_rate.py --threads 2 \\
        --out benchmarks/results/matmul_rate-cpu.json
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from _common import pin_threads, report_header, report_parser, write_report
from _step import summary


def main(argv: Sequence[str] | None = None) -> None:
    p = report_parser(__doc__ or "", "benchmarks/results/matmul_rate-cpu.json")
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    pin_threads(args.threads)
    rates = {}
    for dtype in (torch.float32, torch.bfloat16):
        gen = torch.Generator().manual_seed(0)
        a = torch.randn(args.n, args.n, generator=gen).to(dtype)
        b = torch.randn(args.n, args.n, generator=gen).to(dtype)
        torch.mm(a, b)
        values = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            torch.mm(a, b)
            values.append(2 * args.n**3 / (time.perf_counter() - t) / 1e9)
        rates[str(dtype).removeprefix("torch.")] = {"gflop_per_second": summary(values), "raw": values}
    report = {**report_header("matmul_rate"), "config": {"n": args.n, "repeats": args.repeats}, "rates": rates}
    lines = ["# Dense matrix-product rate", "",
             f"{report['date']}; {report['machine']['cpu_model']}, {report['threads']} thread(s); torch "
             f"{report['torch']}; torch.mm {args.n} x {args.n}, {args.repeats} calls after a warm-up.", "",
             f"Command: `{report['command']}`", "", "| dtype | GFLOP/s median [min-max] |", "|---|---|"]
    for name, r in rates.items():
        s = r["gflop_per_second"]
        lines.append(f"| {name} | {s['median']:.0f} [{s['min']:.0f}-{s['max']:.0f}] |")
    write_report(args.out, report, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
