"""One training step of the seed's CNN (forward + loss + backward + Adam, batch 32, 16x16
digits) on our layers against PyTorch's own layers, in the same run, on this machine's CPU.

The two run interleaved (rounds of steps, alternating), from the same weights, on the same
batches; medians per step. A second, instrumented pass splits our step into our kernels
(conv2d forward, conv2d_grad_input, conv2d_grad_weight, matmul: the core API calls the
PyTorch operators make) and the rest (PyTorch's pooling, loss, ReLU masks, optimizer and
the operator dispatch); a third pass times each conv layer's kernels alone, ours against
PyTorch's, with the step's shapes.

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

import numpy as np
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


def _median_pair(ours, peer, n: int = 200) -> tuple[float, float]:
    """Medians of two callables, timed alternately."""
    for f in (ours, peer):
        for _ in range(5):
            f()
    t_o, t_p = [], []
    for _ in range(n):
        for f, ts in ((ours, t_o), (peer, t_p)):
            t0 = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t0)
    return statistics.median(t_o), statistics.median(t_p)


def _dispatch_overhead():
    """Per-call cost of one of our operators on 4x4 tensors (where the kernel is nothing):
    forward, and forward + backward, against PyTorch's matmul."""
    a, b, one = torch.randn(4, 4), torch.randn(4, 4), torch.ones(4, 4)
    ag = a.clone().requires_grad_(True)

    def ours_fb():
        torch.ops.lepton_accel.matmul(ag, b, None, None, "auto").backward(one)

    def peer_fb():
        (ag @ b).backward(one)
    fwd = _median_pair(lambda: torch.ops.lepton_accel.matmul(a, b, None, None, "auto"),
                       lambda: a @ b, n=500)
    return fwd, _median_pair(ours_fb, peer_fb, n=500)


def _conv_layers(batch: int, seed: int = 0):
    """Each conv layer of the step with its shapes: ours (the core API calls the operators
    make, NHWC) against PyTorch's (conv+ReLU forward; convolution_backward for the
    gradients the step needs), as medians."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    # (name, C, OC, H): conv1 needs no input gradient (the images need none)
    for name, c, oc, h, need_dx in (("conv1 1->32, 16x16", 1, 32, 16, False),
                                    ("conv2 32->64, 7x7", 32, 64, 7, True)):
        x = torch.randn(batch, c, h, h, generator=g)
        w, b = torch.randn(oc, c, 3, 3, generator=g), torch.randn(oc, generator=g)
        dy = torch.randn(batch, oc, h - 2, h - 2, generator=g)
        xn, dyn = x.permute(0, 2, 3, 1).numpy(), dy.permute(0, 2, 3, 1).numpy()
        x_cl, dy_cl = (t.contiguous(memory_format=torch.channels_last) for t in (x, dy))
        xn, dyn, wn, bn = (np.ascontiguousarray(a) for a in (xn, dyn, w.numpy(), b.numpy()))
        fwd = _median_pair(lambda: api.conv2d(xn, wn, bias=bn, layout="NHWC", activation="relu"),
                           lambda: torch.relu(TF.conv2d(x, w, b)))
        ours_bwd = [lambda: api.conv2d_grad_weight(xn, dyn, kernel_hw=3, layout="NHWC")]
        if need_dx:
            ours_bwd.append(lambda: api.conv2d_grad_input(dyn, wn, input_hw=(h, h),
                                                          layout="NHWC"))
        mask = [need_dx, True, True]
        bwd = _median_pair(lambda: [f() for f in ours_bwd],
                           lambda: torch.ops.aten.convolution_backward(
                               dy, x, w, [oc], [1, 1], [0, 0], [1, 1], False, [0, 0], 1, mask))
        rows.append((name, fwd, bwd))
    return rows


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
        layers = _conv_layers(args.batch)
        (ov_f, pv_f), (ov_b, pv_b) = _dispatch_overhead()

    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["torch"] / med["lepton"]
    ours = {k: v / n_instr for k, v in acc.items()}
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
    lines += ["", "Our conv kernels against PyTorch's (oneDNN) with this step's shapes, each timed "
              "alone, alternating, medians (ours: the core API on NHWC arrays, as the operators "
              "call it; backward: the gradients the step needs, ours as separate "
              "conv2d_grad_weight/_input calls, PyTorch's one convolution_backward):", "",
              "| layer | forward ours | forward PyTorch | ratio | backward ours | "
              "backward PyTorch | ratio |", "|---|---|---|---|---|---|---|"]
    for name, (fo, fp), (bo, bp) in layers:
        lines.append(f"| {name} | {ms(fo)} | {ms(fp)} | {fp / fo:.2f} | {ms(bo)} | {ms(bp)} | "
                     f"{bp / bo:.2f} |")
    tot_o = sum(fo + bo for _, (fo, _), (bo, _) in layers)
    tot_p = sum(fp + bp for _, (_, fp), (_, bp) in layers)
    lines += ["", f"All conv work per step: ours {ms(tot_o)}, PyTorch's {ms(tot_p)} "
              f"(PyTorch / ours {tot_p / tot_o:.2f}); the step's difference "
              f"{ms(med['lepton'] - med['torch'])}."]
    us = lambda s: f"{1e6 * s:.0f} us"  # noqa: E731
    lines += ["", "Per-call cost where the kernel is nothing (4x4 float32, medians of 500): our "
              f"matmul operator forward {us(ov_f)} (PyTorch's `a @ b` {us(pv_f)}); forward + "
              f"backward {us(ov_b)} (PyTorch's {us(pv_b)})."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
