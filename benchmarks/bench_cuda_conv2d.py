"""Our CUDA conv2d against cuDNN (through PyTorch), layer by layer.

    python benchmarks/bench_cuda_conv2d.py                 # batch 32 and 256, bf16, NHWC
    python benchmarks/bench_cuda_conv2d.py --batch 32 --repeat 30
    python benchmarks/bench_cuda_conv2d.py --kernel wgmma      # force a family (else auto)

Layers: every distinct convolution of ResNet-50 (torchvision v1.5: stride on the 3x3)
and the depthwise 3x3 layers of MobileNetV2. Both sides get the same channels-last
bfloat16 tensors (x NHWC, filters OHWI in memory); PyTorch runs with
`torch.backends.cudnn.benchmark = True`. Two comparisons per layer:
  conv       ours (no epilogue)            vs F.conv2d(x, w)
  fused      ours conv + bias + ReLU       vs relu(F.conv2d(x, w) + bias)
Timing: each side is captured in a CUDA graph of `--inner` calls (so host launch cost
is out of the numbers on both sides), rotating over copies of x that together exceed
3x the L2 cache; warm-up replays first, then the median over `--repeat` replays timed
with CUDA events. Each layer's output is also checked against PyTorch's. `--kernel` forces our kernel
family (auto, generic, depthwise, mma, wgmma; a family that cannot run a layer falls
back and the table's kernel column names what ran).
Writes a Markdown table and a JSON file to benchmarks/results/ (a forced family adds
its name to the file names).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (name, C, H=W, OC, k, stride, padding, groups)
RESNET50 = [
    ("conv1_7x7s2", 3, 224, 64, 7, 2, 3, 1),
    ("l1_1x1_64_64", 64, 56, 64, 1, 1, 0, 1),
    ("l1_3x3_64_64", 64, 56, 64, 3, 1, 1, 1),
    ("l1_1x1_64_256", 64, 56, 256, 1, 1, 0, 1),
    ("l1_1x1_256_64", 256, 56, 64, 1, 1, 0, 1),
    ("l2_1x1_256_128", 256, 56, 128, 1, 1, 0, 1),
    ("l2_3x3s2_128_128", 128, 56, 128, 3, 2, 1, 1),
    ("l2_1x1_128_512", 128, 28, 512, 1, 1, 0, 1),
    ("l2_ds_1x1s2_256_512", 256, 56, 512, 1, 2, 0, 1),
    ("l2_1x1_512_128", 512, 28, 128, 1, 1, 0, 1),
    ("l2_3x3_128_128", 128, 28, 128, 3, 1, 1, 1),
    ("l3_1x1_512_256", 512, 28, 256, 1, 1, 0, 1),
    ("l3_3x3s2_256_256", 256, 28, 256, 3, 2, 1, 1),
    ("l3_1x1_256_1024", 256, 14, 1024, 1, 1, 0, 1),
    ("l3_ds_1x1s2_512_1024", 512, 28, 1024, 1, 2, 0, 1),
    ("l3_1x1_1024_256", 1024, 14, 256, 1, 1, 0, 1),
    ("l3_3x3_256_256", 256, 14, 256, 3, 1, 1, 1),
    ("l4_1x1_1024_512", 1024, 14, 512, 1, 1, 0, 1),
    ("l4_3x3s2_512_512", 512, 14, 512, 3, 2, 1, 1),
    ("l4_1x1_512_2048", 512, 7, 2048, 1, 1, 0, 1),
    ("l4_ds_1x1s2_1024_2048", 1024, 14, 2048, 1, 2, 0, 1),
    ("l4_1x1_2048_512", 2048, 7, 512, 1, 1, 0, 1),
    ("l4_3x3_512_512", 512, 7, 512, 3, 1, 1, 1),
]
MOBILENET_V2_DW = [
    ("mbv2_dw_32_112", 32, 112, 32, 3, 1, 1, 32),
    ("mbv2_dw_96_112s2", 96, 112, 96, 3, 2, 1, 96),
    ("mbv2_dw_144_56", 144, 56, 144, 3, 1, 1, 144),
    ("mbv2_dw_144_56s2", 144, 56, 144, 3, 2, 1, 144),
    ("mbv2_dw_192_28", 192, 28, 192, 3, 1, 1, 192),
    ("mbv2_dw_384_14", 384, 14, 384, 3, 1, 1, 384),
    ("mbv2_dw_576_14s2", 576, 14, 576, 3, 2, 1, 576),
    ("mbv2_dw_960_7", 960, 7, 960, 3, 1, 1, 960),
]


def no_gpu(msg: str) -> int:
    print(f"bench_cuda_conv2d: {msg}; nothing was measured.", file=sys.stderr)
    return 2


def kernel_families() -> list[str] | None:
    """The family names the binding parses (None when the core is not importable)."""
    try:
        from lepton_accel._native import core
    except ImportError:
        return None
    return list(core.ConvKernel.__members__) if core is not None else None


def git_commit() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except Exception:
        return "unknown"


def driver_version() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, check=True).stdout.strip().splitlines()[0]
    except Exception:
        return "unknown"


def time_graph(torch, fn, inner: int, warmup: int, repeat: int) -> float:
    """Median seconds per call of fn(i) over `repeat` replays of a graph of `inner` calls."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # eager warm-up: cuDNN autotuning, smem opt-in, allocators
        for i in range(3):
            fn(i)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(inner):
            fn(i)
    for _ in range(warmup):
        graph.replay()
    torch.cuda.synchronize()
    times = []
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(repeat):
        start.record()
        graph.replay()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) * 1e-3 / inner)
    del graph
    return statistics.median(times)


def bench_layer(torch, core, layer, batch, args, l2_bytes):
    name, C, HW, OC, k, s, p, groups = layer
    F = torch.nn.functional
    cl = torch.channels_last
    bf16 = torch.bfloat16
    H = W = HW
    OH = (H + 2 * p - k) // s + 1
    OW = (W + 2 * p - k) // s + 1
    x_bytes = batch * C * H * W * 2
    copies = max(1, min(16, math.ceil(3 * l2_bytes / max(x_bytes, 1))))
    xs = [torch.randn(batch, C, H, W, device="cuda").to(bf16).to(memory_format=cl)
          for _ in range(copies)]
    w = (torch.randn(OC, C // groups, k, k, device="cuda") / math.sqrt(C // groups * k * k)) \
        .to(bf16).to(memory_format=cl)
    b = torch.randn(OC, device="cuda").to(bf16)
    y = torch.empty(batch, OC, OH, OW, device="cuda", dtype=bf16).to(memory_format=cl)
    bf = core.DType.bfloat16

    def problem(fused):
        return core.Conv2dProblem(
            N=batch, C=C, H=H, W=W, OC=OC, KH=k, KW=k, OH=OH, OW=OW, stride_h=s, stride_w=s,
            pad_top=p, pad_left=p, groups=groups, x_strides=tuple(xs[0].stride()),
            w_strides=tuple(w.stride()), y_strides=tuple(y.stride()), in_dtype=bf, out_dtype=bf,
            activation=core.Activation.relu if fused else core.Activation.none)

    problems = {fused: problem(fused) for fused in (False, True)}

    def ours(i, fused):
        x = xs[i % copies]
        return core.cuda_conv2d(problems[fused], x.data_ptr(), w.data_ptr(), y.data_ptr(),
                                b.data_ptr() if fused else 0,
                                stream=torch.cuda.current_stream().cuda_stream, kernel=args.kernel)

    def theirs(i, fused):
        x = xs[i % copies]
        out = F.conv2d(x, w, stride=s, padding=p, groups=groups)
        if fused:
            out = torch.relu(out + b.view(1, -1, 1, 1))
        return out

    # correctness against cuDNN (both bf16 in, float32 accumulation)
    kernel = ours(0, True)
    ref = theirs(0, True).float()
    torch.cuda.synchronize()
    err = float(torch.linalg.norm(y.float() - ref) / torch.linalg.norm(ref))

    flops = 2 * batch * OH * OW * OC * (C // groups) * k * k
    row = dict(layer=name, batch=batch, C=C, HW=HW, OC=OC, k=k, stride=s, groups=groups,
               kernel=kernel, rel_err_vs_cudnn=err, gflop=flops / 1e9, x_copies=copies)
    for mode, fused in (("conv", False), ("fused", True)):
        t_ours = time_graph(torch, lambda i: ours(i, fused), args.inner, args.warmup, args.repeat)
        t_theirs = time_graph(torch, lambda i: theirs(i, fused), args.inner, args.warmup, args.repeat)
        row[f"{mode}_ours_us"] = t_ours * 1e6
        row[f"{mode}_cudnn_us"] = t_theirs * 1e6
        row[f"{mode}_ours_tflops"] = flops / t_ours / 1e12
        row[f"{mode}_cudnn_tflops"] = flops / t_theirs / 1e12
        row[f"{mode}_ratio"] = t_theirs / t_ours  # > 1: ours faster
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[32, 256])
    ap.add_argument("--inner", type=int, default=10, help="calls per captured graph")
    ap.add_argument("--warmup", type=int, default=5, help="graph replays before timing")
    ap.add_argument("--repeat", type=int, default=20, help="timed graph replays (median)")
    ap.add_argument("--only", default="", help="substring filter on layer names")
    ap.add_argument("--kernel", default="auto",
                    choices=kernel_families(),
                    help="our kernel family (a family that cannot run a layer falls back)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()

    try:
        import torch
    except ImportError:
        return no_gpu("PyTorch is not installed (cuDNN is reached through it)")
    if not torch.cuda.is_available():
        return no_gpu("PyTorch sees no CUDA device")
    try:
        from lepton_accel import _core as core
    except ImportError as exc:
        return no_gpu(f"lepton_accel._core is not importable ({exc})")
    if not core.BUILD_INFO.get("cuda") or not hasattr(core, "cuda_conv2d"):
        return no_gpu("lepton_accel._core was built without the CUDA kernels")
    if core.cuda_device_count() == 0:
        return no_gpu(core.cuda_runtime_status() or "no CUDA device")

    torch.backends.cudnn.benchmark = True
    props = torch.cuda.get_device_properties(0)
    l2 = getattr(props, "L2_cache_size", 50 * 2**20)
    layers = [l for l in RESNET50 + MOBILENET_V2_DW if args.only in l[0]]
    rows = []
    for batch in args.batch:
        for layer in layers:
            try:
                row = bench_layer(torch, core, layer, batch, args, l2)
            except torch.cuda.OutOfMemoryError:
                print(f"{layer[0]} batch {batch}: out of memory, skipped", file=sys.stderr)
                continue
            rows.append(row)
            print(f"{row['layer']:24s} b{batch:<4d} {row['kernel'][:34]:34s} "
                  f"conv {row['conv_ours_tflops']:7.1f} vs {row['conv_cudnn_tflops']:7.1f} TFLOP/s "
                  f"({row['conv_ratio']:.2f}x)  fused {row['fused_ratio']:.2f}x  "
                  f"err {row['rel_err_vs_cudnn']:.1e}", flush=True)

    meta = dict(device=torch.cuda.get_device_name(0), driver=driver_version(),
                cuda_runtime=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                torch=torch.__version__, date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                command=" ".join([Path(sys.executable).name] + sys.argv), commit=git_commit(),
                kernel=args.kernel,
                build=dict(core.BUILD_INFO))
    summary = {}
    for batch in args.batch:
        for group, names in (("resnet50", {l[0] for l in RESNET50}),
                             ("mobilenetv2_dw", {l[0] for l in MOBILENET_V2_DW})):
            sel = [r for r in rows if r["batch"] == batch and r["layer"] in names]
            if sel:
                summary[f"{group}_b{batch}"] = dict(
                    layers=len(sel),
                    median_conv_ratio=statistics.median(r["conv_ratio"] for r in sel),
                    median_fused_ratio=statistics.median(r["fused_ratio"] for r in sel))

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "cuda_conv2d_" + "".join(ch if ch.isalnum() else "_" for ch in meta["device"]).strip("_")
    if args.kernel != "auto":
        stem += f"_{args.kernel}"
    (out_dir / f"{stem}.json").write_text(json.dumps(dict(meta=meta, summary=summary, rows=rows), indent=1))
    lines = [f"# CUDA conv2d vs cuDNN: {meta['device']}", "",
             *(f"- {k}: {meta[k]}" for k in ("driver", "cuda_runtime", "cudnn", "torch", "date",
                                               "command", "commit", "kernel")),
             "- dtype bfloat16 (float32 accumulation), NHWC activations, OHWI filters; cuDNN via "
             "PyTorch channels_last with cudnn.benchmark=True; CUDA-graph timing, medians",
             "- ratio = cuDNN time / our time (> 1: ours faster); fused = conv + bias + ReLU, "
             "PyTorch as conv then bias then ReLU", "",
             "| layer | batch | our kernel | conv ours TFLOP/s | conv cuDNN TFLOP/s | conv ratio "
             "| fused ours TFLOP/s | fused PyTorch TFLOP/s | fused ratio | rel err |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['layer']} | {r['batch']} | {r['kernel']} | {r['conv_ours_tflops']:.1f} | "
                     f"{r['conv_cudnn_tflops']:.1f} | {r['conv_ratio']:.2f} | {r['fused_ours_tflops']:.1f} | "
                     f"{r['fused_cudnn_tflops']:.1f} | {r['fused_ratio']:.2f} | {r['rel_err_vs_cudnn']:.1e} |")
    lines += ["", "| group | layers | median conv ratio | median fused ratio |", "|---|---|---|---|"]
    for k, v in summary.items():
        lines.append(f"| {k} | {v['layers']} | {v['median_conv_ratio']:.2f} | {v['median_fused_ratio']:.2f} |")
    (out_dir / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-2 - len(summary):]))
    print(f"wrote {out_dir / (stem + '.md')} and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
