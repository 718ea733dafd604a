"""The cost of the thin layer: lepton_accel.matmul on 4x4 operands over a bare
numpy.matmul, per dtype, with backend="cpu" and "auto"; and the import time of the package
and of `lepton-accel --help`. Medians of many timed batches, the peer timed in the same run.

    python benchmarks/bench_dispatch.py [--out benchmarks/results/dispatch-DATE.md]
"""
from __future__ import annotations

import argparse
import datetime as dt
import platform
import shutil
import statistics
import subprocess
import sys
import timeit

import numpy as np

DTYPES = ("float32", "float16", "bfloat16", "int8", "int16")


def per_call_us(fn, number: int = 200, repeat: int = 300) -> tuple[float, float]:
    """(median, min) microseconds per call over `repeat` batches of `number` calls."""
    ts = [t / number * 1e6 for t in timeit.repeat(fn, number=number, repeat=repeat)]
    return statistics.median(ts), min(ts)


def operands(dtype: str):
    import lepton_accel as la

    rng = np.random.default_rng(0)
    if dtype.startswith("int"):
        a = rng.integers(-100, 100, (4, 4)).astype(dtype)
    else:
        a = rng.standard_normal((4, 4)).astype(la.dtypes.DTYPES[dtype])
    return a, a.copy()


def dispatch_rows():
    import lepton_accel as la

    rows = []
    for dtype in DTYPES:
        a, b = operands(dtype)
        # the peer: numpy.matmul on the same arrays (bfloat16: ml_dtypes' own matmul loop)
        peer = per_call_us(lambda: np.matmul(a, b))
        cpu = per_call_us(lambda: la.matmul(a, b, backend="cpu"))
        auto = per_call_us(lambda: la.matmul(a, b))
        rows.append((dtype, peer, cpu, auto))
    return rows


def wall_s(argv: list[str], runs: int = 15) -> float:
    ts = []
    for _ in range(runs):
        t0 = timeit.default_timer()
        subprocess.run(argv, check=True, capture_output=True)
        ts.append(timeit.default_timer() - t0)
    return statistics.median(ts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="write the results as Markdown here")
    args = ap.parse_args()
    rows = dispatch_rows()
    py = sys.executable
    t_python = wall_s([py, "-c", "pass"])
    t_numpy = wall_s([py, "-c", "import numpy"])
    t_pkg = wall_s([py, "-c", "import lepton_accel"])
    cli = shutil.which("lepton-accel")
    t_help = wall_s([cli, "--help"]) if cli else float("nan")
    lines = [
        "# The thin layer: dispatch overhead and import time",
        "",
        f"- date: {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}",
        f"- machine: {platform.processor() or platform.machine()}, "
        f"{len(__import__('os').sched_getaffinity(0))} cores, {platform.system()}",
        f"- python {platform.python_version()}, numpy {np.__version__}",
        f"- commit: {_commit()}",
        "- command: `python benchmarks/bench_dispatch.py --out ...`",
        "",
        "lepton_accel.matmul on 4x4 operands over numpy.matmul on the same arrays, microseconds "
        "per call: median (min) of 300 batches of 200 calls.",
        "",
        "| dtype | numpy.matmul | backend=\"cpu\" over numpy | backend=\"auto\" over numpy |",
        "|---|---|---|---|",
    ]
    for dtype, peer, cpu, auto in rows:
        lines.append(f"| {dtype} | {peer[0]:.2f} ({peer[1]:.2f}) | {cpu[0] - peer[0]:+.2f} "
                     f"({cpu[1] - peer[1]:+.2f}) | {auto[0] - peer[0]:+.2f} ({auto[1] - peer[1]:+.2f}) |")
    lines += [
        "",
        "Start-up, median wall time of 15 fresh processes:",
        "",
        "| what | seconds | over `python -c pass` |",
        "|---|---|---|",
        f"| `python -c pass` | {t_python:.3f} | |",
        f"| `import numpy` | {t_numpy:.3f} | {t_numpy - t_python:.3f} |",
        f"| `import lepton_accel` | {t_pkg:.3f} | {t_pkg - t_python:.3f} |",
        f"| `lepton-accel --help` | {t_help:.3f} | {t_help - t_python:.3f} |",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
