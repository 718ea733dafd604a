"""Times lepton_accel's CUDA matmul kernels against cuBLAS (torch.matmul) on one GPU.

Both run on PyTorch's current stream on the same device buffers; our kernel gets raw
pointers through `_core.cuda_gemm`. Each measurement: warm-up, then `--reps` timed
calls with CUDA events, median reported. Inputs rotate among enough copies that the
working set exceeds 3x the L2 cache, so repeats do not hit in L2. Each shape is also
checked against the cuBLAS result (relative Frobenius error).

    python benchmarks/bench_cuda_matmul.py                      # default set
    python benchmarks/bench_cuda_matmul.py --dtypes bf16 --shapes square --reps 50

Writes a markdown table to benchmarks/results/ (device, driver, date, command, commit).
"""
from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

SQUARE = [1024, 2048, 4096, 6144, 8192]
LLM_KN = [(4096, 4096), (4096, 11008), (11008, 4096), (4096, 14336), (14336, 4096)]
LLM_M = [4096, 8192, 16384]


def die(msg: str) -> None:
    print(f"bench_cuda_matmul: {msg}", file=sys.stderr)
    sys.exit(2)


def environment():
    try:
        import torch
    except ImportError:
        die("PyTorch is needed for the cuBLAS baseline and CUDA events (pip install torch).")
    if not torch.cuda.is_available():
        die("no CUDA GPU visible to PyTorch; this benchmark needs one.")
    try:
        from lepton_accel import _core
    except ImportError as exc:
        die(f"lepton_accel._core is not importable: {exc}")
    if not _core.BUILD_INFO.get("cuda"):
        die("lepton_accel was built without CUDA (no nvcc at build time).")
    if _core.cuda_device_count() == 0:
        die("lepton_accel sees no CUDA device: " + _core.cuda_runtime_status())
    return torch, _core


def kernel_families() -> list[str] | None:
    """The family names the binding parses (None when the core is not importable)."""
    try:
        from lepton_accel._native import core
    except ImportError:
        return None
    return list(core.GemmKernel.__members__) if core is not None else None


def git_commit() -> str:
    if os.environ.get("LEPTON_GIT_COMMIT"):
        return os.environ["LEPTON_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, cwd=Path(__file__).resolve().parent,
                               timeout=10)
        if out.returncode == 0:
            return out.stdout.strip() + (" (modified)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def driver_version() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        if out.returncode == 0:
            return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def median_ms(torch, fn, sets, reps, warmup):
    for i in range(warmup):
        fn(*sets[i % len(sets)])
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(reps):
        s = sets[i % len(sets)]
        starts[i].record()
        fn(*s)
        ends[i].record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))


def run_shape(torch, core, M, N, K, dtype_name, layout, args, l2_bytes):
    tdtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32,
              "tf32": torch.float32}[dtype_name]
    el = core.DType.__members__[{"bf16": "bfloat16", "fp16": "float16", "fp32": "float32",
                                 "tf32": "float32"}[dtype_name]]
    tf32 = dtype_name == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    item = torch.finfo(tdtype).bits // 8
    set_bytes = (M * K + K * N + M * N) * item
    n_sets = max(1, math.ceil(3 * l2_bytes / set_bytes) + 1)
    free, _ = torch.cuda.mem_get_info()
    n_sets = max(1, min(n_sets, int(0.6 * free // set_bytes)))

    dev = torch.device("cuda")
    sets = []
    for _ in range(n_sets):
        a = torch.randn(M, K, device=dev, dtype=tdtype)
        if layout == "nt":  # B = W^T with W (N x K) contiguous: K-major B, the nn.Linear layout
            b = torch.randn(N, K, device=dev, dtype=tdtype).t()
        else:  # "nn": B (K x N) row-major
            b = torch.randn(K, N, device=dev, dtype=tdtype)
        c = torch.empty(M, N, device=dev, dtype=tdtype)
        sets.append((a, b, c))

    stream = torch.cuda.current_stream().cuda_stream
    names = []

    a0, b0, c0 = sets[0]  # every set has the same strides: one problem description
    problem = core.GemmProblem(M=M, N=N, K=K, a_strides=(0, a0.stride(0), a0.stride(1)),
                               b_strides=(0, b0.stride(0), b0.stride(1)),
                               c_strides=(0, c0.stride(0), c0.stride(1)), in_dtype=el, out_dtype=el,
                               allow_tf32=tf32)

    def ours(a, b, c):
        names.append(core.cuda_gemm(problem, a.data_ptr(), b.data_ptr(), c.data_ptr(), stream=stream,
                                    kernel=args.kernel))

    def cublas(a, b, c):
        torch.matmul(a, b, out=c)

    # Correctness against cuBLAS on the first set (float64 of cuBLAS's own result).
    a, b, c = sets[0]
    c.fill_(float("nan"))
    ours(a, b, c)
    ref = torch.matmul(a.double(), b.double()) if M * N * K <= 4096**3 else torch.matmul(a, b).double()
    err = ((c.double() - ref).norm() / ref.norm()).item()

    t_ours = median_ms(torch, ours, sets, args.reps, args.warmup)
    t_cublas = median_ms(torch, cublas, sets, args.reps, args.warmup)
    flops = 2.0 * M * N * K
    del sets
    torch.cuda.empty_cache()
    return {
        "M": M, "N": N, "K": K, "dtype": dtype_name, "layout": layout, "kernel": names[0],
        "ours_tflops": flops / (t_ours * 1e-3) / 1e12, "cublas_tflops": flops / (t_cublas * 1e-3) / 1e12,
        "ours_ms": t_ours, "cublas_ms": t_cublas, "err": err,
    }


def plan(args):
    cases = []
    for d in args.dtypes:
        layouts = args.layouts or (["nt", "nn"] if d in ("bf16", "fp16") else ["nn"])
        for layout in layouts:
            if args.shapes in ("square", "all"):
                cases += [(s, s, s, d, layout) for s in SQUARE if s <= args.max_square]
            if args.shapes in ("llm", "all") and (d in ("bf16", "fp16") or args.llm_fp32):
                cases += [(m, n, k, d, layout) for m in LLM_M for (k, n) in LLM_KN]
    return cases


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtypes", nargs="+", default=["bf16", "fp16", "tf32", "fp32"],
                    choices=["bf16", "fp16", "tf32", "fp32"])
    ap.add_argument("--shapes", default="all", choices=["square", "llm", "all"])
    ap.add_argument("--layouts", nargs="+", choices=["nt", "nn"], default=None,
                    help="nt: B given as N x K (K-major); nn: B row-major K x N. "
                         "Default: both for bf16/fp16, nn for fp32/tf32.")
    ap.add_argument("--llm-fp32", action="store_true", help="also run LLM shapes in fp32/tf32")
    ap.add_argument("--max-square", type=int, default=8192)
    ap.add_argument("--kernel", default="auto", choices=kernel_families(),
                    help="our kernel family (the binding's GemmKernel names)")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--out", default=None, help="markdown output path")
    args = ap.parse_args(argv)

    torch, core = environment()
    props = torch.cuda.get_device_properties(0)
    l2 = getattr(props, "L2_cache_size", 50 * 2**20)
    rows = []
    for M, N, K, d, layout in plan(args):
        r = run_shape(torch, core, M, N, K, d, layout, args, l2)
        rows.append(r)
        print(f"{d:5s} {layout} {M:6d}x{N:6d}x{K:6d}  ours {r['ours_tflops']:7.1f}  cuBLAS "
              f"{r['cublas_tflops']:7.1f} TFLOP/s  ratio {r['ours_tflops'] / r['cublas_tflops']:.3f}  "
              f"err {r['err']:.1e}  {r['kernel']}", flush=True)

    now = dt.datetime.now(dt.timezone.utc)
    lines = [
        "# CUDA matmul: lepton_accel vs cuBLAS",
        "",
        f"- device: {props.name} ({props.multi_processor_count} SMs, L2 {l2 / 2**20:.0f} MiB)",
        f"- driver: {driver_version()}; CUDA (torch) {torch.version.cuda}; torch {torch.__version__}",
        f"- date (UTC): {now:%Y-%m-%d %H:%M}",
        f"- command: `{' '.join(shlex.quote(a) for a in [sys.executable.split('/')[-1]] + sys.argv)}`",
        f"- commit: {git_commit()}",
        f"- method: CUDA events on torch's current stream, median of {args.reps} after {args.warmup} "
        "warm-up calls, inputs rotated over > 3x L2; err = relative Frobenius error of our output vs "
        "the float64 product of the same inputs (fp32-accumulated cuBLAS result above 4096^3).",
        "- layouts: nt = A row-major, B given as N x K (K-major, nn.Linear weights); "
        "nn = both row-major.",
        "",
        "| dtype | layout | M | N | K | ours TFLOP/s | cuBLAS TFLOP/s | ours / cuBLAS | err | kernel |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dtype']} | {r['layout']} | {r['M']} | {r['N']} | {r['K']} | {r['ours_tflops']:.1f} | "
            f"{r['cublas_tflops']:.1f} | {r['ours_tflops'] / r['cublas_tflops']:.3f} | {r['err']:.1e} | "
            f"`{r['kernel']}` |")
    text = "\n".join(lines) + "\n"
    out = Path(args.out) if args.out else (
        Path(__file__).resolve().parent / "results" /
        f"cuda_matmul_{now:%Y%m%d_%H%M}_{props.name.replace(' ', '_')}.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
