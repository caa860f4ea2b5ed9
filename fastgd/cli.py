"""The ``fastgd`` command line: ``fastgd bench`` measures every kernel on this machine."""

from __future__ import annotations

import argparse
import json
import platform
import sys
from typing import Any

from fastgd import bench, demo
from fastgd.arrays import STATE_PRECISIONS


def _csv(choices: list[str] | None = None):
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if choices is not None and t not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {choices}")
        return items
    return parse


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(eval_size(t)) for t in text.split(",") if t.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError("sizes must be positive")
    return sizes


def eval_size(text: str) -> int:
    """``'16777216'``, ``'2**24'`` or ``'1e5'`` as an integer."""
    text = text.strip()
    if "**" in text:
        base, exp = text.split("**")
        return int(base) ** int(exp)
    value = float(text)
    if not value.is_integer():
        raise ValueError(f"size {text!r} is not an integer")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastgd", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bench", help="time every optimizer step against the memory roofline",
                       description="Time one optimizer step per algorithm, size and dtype; "
                       "compare with a fused copy kernel that moves the same bytes (the "
                       "roofline), with NumPy and with torch.optim when installed.")
    b.add_argument("--algorithms", type=_csv(list(bench.CASES)), default=list(bench.CASES),
                   help="comma-separated (default: all)")
    b.add_argument("--sizes", type=_sizes, default=None,
                   help="comma-separated element counts, e.g. 1e3,1e5,2**24 (default 2**24; "
                        "2**25 with --dask)")
    b.add_argument("--dtypes", type=_csv(["float32", "float64"]),
                   default=["float32", "float64"])
    b.add_argument("--state-precision", type=_csv(list(STATE_PRECISIONS)), default=["full"],
                   help="comma-separated optimizer state precisions, e.g. full,bf16 (default "
                   "full; low-precision state with float32 parameters, on the CPU)")
    b.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: the CPU, and the GPU too when one is present")
    b.add_argument("--repeat", type=int, default=7, help="timed repetitions (median kept)")
    b.add_argument("--no-baselines", action="store_true", help="skip NumPy and torch")
    b.add_argument("--many", action="store_true",
                   help="also step 161 tensors of log-normal sizes (16M elements) at once")
    b.add_argument("--startup", action="store_true",
                   help="also time import + first Adam step in a new process (warm cache)")
    b.add_argument("--json", metavar="FILE", help="write results as JSON ('-' for stdout)")
    b.add_argument("--plot", metavar="FILE.png", help="bar chart (needs matplotlib)")
    b.add_argument("--markdown", metavar="FILE.md",
                   help="write the table and the targets met or missed as Markdown")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.add_argument("--dask", type=int, metavar="N",
                   help="instead: an Adam step over a Dask array (--sizes, default 2**25) on "
                        "a local cluster of N worker processes against the single-process "
                        "step, and the overhead per chunk (needs the dask extra)")
    b.add_argument("--chunks", type=int, metavar="K",
                   help="with --dask: chunks of the array (default: the cluster's threads)")
    demo.add_arguments(sub.add_parser(
        "demo", help="watch the optimizers on toy problems (tables and PNG pictures)",
        description="Gradient descent on x^2, a linear regression and 2-D test surfaces, every "
        "update made by fastgd's optimizers; prints tables and writes PNGs (matplotlib)."))
    return parser


def _bench(args: argparse.Namespace) -> int:
    if args.repeat < 1:
        raise SystemExit("fastgd bench: --repeat must be >= 1")
    if args.dask is not None:
        return _bench_dask(args)
    from fastgd import bench_cuda

    use_gpu = args.device == "cuda" or (args.device == "auto" and bench_cuda.available())
    if args.device == "cuda" and not bench_cuda.available():
        raise SystemExit("fastgd bench: --device cuda needs a CUDA GPU and numba-cuda")
    args.sizes = args.sizes or [2**24]
    results = []
    if args.device != "cuda":
        results += bench.run(args.algorithms, args.sizes, args.dtypes, args.repeat,
                             baselines=not args.no_baselines, progress=not args.quiet,
                             many=args.many, precisions=args.state_precision)
    if use_gpu:
        results += bench_cuda.run(args.algorithms, args.sizes, args.dtypes, args.repeat,
                                  baselines=not args.no_baselines, progress=not args.quiet,
                                  many=args.many, precisions=args.state_precision)
        print(f"GPU: {bench_cuda.device_name()} (rows after the CPU rows; roofline = "
              "device-to-device copy)")
    startup = bench.startup_seconds() if args.startup else None
    if args.json != "-":
        print(f"fastgd bench on {platform.processor() or platform.machine()}, "
              f"{_threads()} threads")
        print(bench.format_table(results))
        if startup is not None:
            print(f"import fastgd + first Adam step, new process, warm cache: {startup:.2f} s")
    if args.json:
        payload = {"machine": _machine(), "results": bench.as_records(results),
                   "startup_seconds": startup}
        text = json.dumps(payload, indent=2)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as handle:
                handle.write(text + "\n")
    if args.markdown:
        with open(args.markdown, "w") as handle:
            handle.write(bench.format_markdown(results, _machine(), startup))
    if args.plot:
        from fastgd.plotting import plot_bench

        plot_bench(results, args.plot)
    return 0


def _bench_dask(args: argparse.Namespace) -> int:
    if args.dask < 1 or (args.chunks is not None and args.chunks < 1):
        raise SystemExit("fastgd bench: --dask and --chunks must be >= 1")
    from fastgd import bench_dask

    results = [bench_dask.run(args.dask, size, args.chunks, args.repeat)
               for size in args.sizes or [2**25]]
    if args.json:
        text = json.dumps({"machine": _machine(), "dask": results}, indent=2)
        if args.json == "-":
            print(text)
            return 0
        with open(args.json, "w") as handle:
            handle.write(text + "\n")
    for result in results:
        print(bench_dask.format_result(result))
    return 0


def _threads() -> int:
    import numba

    return numba.get_num_threads()


def _machine() -> dict[str, Any]:
    import numba
    import numpy

    return {"platform": platform.platform(), "processor": platform.processor(),
            "python": platform.python_version(), "numba": numba.__version__,
            "numpy": numpy.__version__, "threads": _threads()}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "bench":
        return _bench(args)
    if args.command == "demo":
        return demo.main(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
