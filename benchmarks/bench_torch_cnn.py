"""One training step of the seed's CNN (forward + loss + backward + Adam, batch 32, 16x16
digits) on our layers against PyTorch's own layers, in the same run, on this machine's CPU.

The two run interleaved (rounds of steps, alternating), from the same weights, on the same
batches; medians per step. A second, instrumented pass splits our step into our kernels
(conv2d forward, conv2d_grad_input, conv2d_grad_weight, matmul: the core API calls the
PyTorch operators make) and the rest (PyTorch's pooling, loss, ReLU masks, optimizer and
the operator dispatch); PyTorch's convolution time comes from its profiler.

    python3 benchmarks/bench_torch_cnn.py [--threads 1] [--steps 300] [--out FILE.md]
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import statistics
import subprocess
import time

import torch
import torch.nn.functional as TF

import lepton_accel.api as api
from lepton_accel.torch import cnn

KERNELS = ("conv2d", "conv2d_grad_input", "conv2d_grad_weight", "matmul")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _stepper(model, data, batch: int, seed: int):
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    order = []

    def step():
        nonlocal order
        if not order:
            order = [i for i in cnn.batches(len(data.train), batch, gen) if len(i) == batch]
        idx = order.pop()
        opt.zero_grad(set_to_none=True)
        loss = TF.cross_entropy(model(data.train.x[idx]), data.train.y[idx])
        loss.backward()
        opt.step()
    return step


@contextlib.contextmanager
def _timed_kernels(acc: dict):
    """Time every core-API call the PyTorch operators make (api.<op> is what they call)."""
    saved = {name: getattr(api, name) for name in KERNELS}

    def wrap(name, fn):
        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                acc[name] = acc.get(name, 0.0) + time.perf_counter() - t0
        return timed
    for name, fn in saved.items():
        setattr(api, name, wrap(name, fn))
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(api, name, fn)


def _torch_conv_share(step, n: int) -> dict:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(n):
            step()
    out = {}
    for ev in prof.key_averages():
        if ev.key in ("aten::convolution", "aten::convolution_backward", "aten::addmm",
                      "aten::mm"):
            out[ev.key] = ev.cpu_time_total / 1e6 / n
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1, help="PyTorch and BLAS threads")
    ap.add_argument("--steps", type=int, default=300, help="timed steps per side")
    ap.add_argument("--round", type=int, default=10, help="steps per side per round")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--out", default=None, help="write the markdown table here too")
    args = ap.parse_args(argv)

    data = cnn.load_digits(16)
    with cnn.limit_threads(args.threads):
        steps = {layers: _stepper(cnn.build_model(layers), data, args.batch, 0)
                 for layers in ("lepton", "torch")}
        for s in steps.values():
            for _ in range(20):
                s()
        times = {"lepton": [], "torch": []}
        for _ in range(max(args.steps // args.round, 1)):
            for layers, s in steps.items():
                for _ in range(args.round):
                    t0 = time.perf_counter()
                    s()
                    times[layers].append(time.perf_counter() - t0)
        acc: dict = {}
        n_instr = 100
        with _timed_kernels(acc):
            t0 = time.perf_counter()
            for _ in range(n_instr):
                steps["lepton"]()
            instr_step = (time.perf_counter() - t0) / n_instr
        peer_share = _torch_conv_share(steps["torch"], 50)

    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["torch"] / med["lepton"]
    ours = {k: v / n_instr for k, v in acc.items()}
    conv_ours = sum(ours.get(k, 0.0) for k in KERNELS[:3])
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, cwd=os.path.dirname(__file__)).stdout.strip()
    except OSError:
        commit = ""
    ms = lambda s: f"{1e3 * s:.2f} ms"  # noqa: E731
    lines = [
        f"- date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
        f"- machine: {_cpu_name()}, {os.cpu_count()} cores, {platform.system()}; "
        f"load average at the end {os.getloadavg()[0]:.2f}",
        f"- torch {torch.__version__}, {args.threads} thread(s) for PyTorch and for the BLAS",
        f"- commit: {commit}",
        f"- command: `python3 benchmarks/bench_torch_cnn.py --threads {args.threads} "
        f"--steps {args.steps}`",
        "",
        "| training step (batch %d) | median | PyTorch / ours |" % args.batch,
        "|---|---|---|",
        f"| our layers | {ms(med['lepton'])} | {ratio:.2f} |",
        f"| PyTorch's layers | {ms(med['torch'])} | 1.00 |",
        "",
        f"Where our step goes (instrumented pass, {n_instr} steps, mean {ms(instr_step)} "
        "per step):",
        "",
        "| part | per step | share |",
        "|---|---|---|",
    ]
    for k in KERNELS:
        lines.append(f"| our {k} kernel calls | {ms(ours.get(k, 0.0))} | "
                     f"{100 * ours.get(k, 0.0) / instr_step:.0f} % |")
    rest = instr_step - sum(ours.values())
    lines.append(f"| everything else (PyTorch's pooling, loss, ReLU masks, Adam; operator "
                 f"dispatch) | {ms(rest)} | {100 * rest / instr_step:.0f} % |")
    lines += ["", "PyTorch's own step, from its profiler (CPU time per step, 50 steps):", "",
              "| op | per step |", "|---|---|"]
    for k, v in sorted(peer_share.items()):
        lines.append(f"| {k} | {ms(v)} |")
    conv_peer = peer_share.get("aten::convolution", 0) + peer_share.get(
        "aten::convolution_backward", 0)
    lines += ["", f"Convolutions (forward and both gradients): ours {ms(conv_ours)} per step, "
              f"PyTorch's {ms(conv_peer)} ({conv_peer / conv_ours:.2f}x)."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
