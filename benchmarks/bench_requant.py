"""Requantization on the cores' output stage vs. on the host, in one run.

    python benchmarks/bench_requant.py [--images 8] [--rounds 5] [--out FILE.md]

The seed CNN (``lepton_accel.torch.cnn``'s architecture, its initial weights: the
arithmetic and the costs do not depend on training) quantized with 300 digit images
for calibration, run on the fpga backend (the Verilator models of the 16x16 int8
conv2d and matmul cores) two ways, alternately:

* ``host``: each layer's op without the requantization epilogue (int32 out of the core,
  the host pools the int32 sums and requantizes them with NumPy), as before the cores
  had an output stage;
* ``device``: each layer's op with the epilogue (``requant=``): the cores' output stage
  requantizes, int8 comes back and is pooled on the host.

Both are checked logit for logit against ``QuantizedNet.reference``. Reported: the
median forward wall time and host share over ``--rounds`` (simulation time dominates
the wall time: it is the simulator's speed, not a projection of a board), the cores'
cycles per layer (the stage adds REQUANT_DELAY = 6 per job), and per layer the bytes of the activation
handed from layer to layer on the host (int32 vs int8) and of the ``c`` stream (the same
both ways: one int8 per 32-bit lane).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import statistics
import sys
import time

import numpy as np


def _machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores visible, Linux {platform.release()}"


def measure(images: int, rounds: int, seed: int = 0) -> dict:
    import torch  # noqa: F401  (the quantizer needs it)

    from lepton_accel import fpga
    from lepton_accel.torch import cnn
    from lepton_accel.torch import quantize as qz

    data = cnn.load_digits(cnn.INPUT_SIZE)
    model = cnn.build_model("torch", seed=seed).eval()
    net = qz.quantize(model, data.train.x.numpy()[:300])
    xq = net.quantize_input(data.test.x.numpy()[:images])
    ref = net.reference(xq)

    def host_path(self, layer, x, backend):
        return None

    ways = {"host": host_path, "device": qz.QuantizedNet._requantized}
    times = {k: [] for k in ways}
    host = {k: [] for k in ways}
    stats_of = {}
    with fpga.configured(16, 16, conv_depth=fpga.DEFAULT_CONV_DEPTH, enabled=True):
        for way, fn in ways.items():          # builds, spec caches
            qz.QuantizedNet._requantized = fn
            out, st = net.run(xq, backend="fpga")
            assert np.array_equal(out, ref), way
            stats_of[way] = st
        for _ in range(rounds):
            for way, fn in ways.items():
                qz.QuantizedNet._requantized = fn
                t0 = time.perf_counter()
                out, st = net.run(xq, backend="fpga")
                times[way].append(time.perf_counter() - t0)
                host[way].append(st.host_s)
                assert np.array_equal(out, ref), way
        qz.QuantizedNet._requantized = ways["device"]

    layers = [(layer, shape) for layer, shape in net._shapes(images)
              if isinstance(layer, (qz.QConv2d, qz.QLinear))]
    rows = []
    for (layer, shape), (_, sh), (_, sd) in zip(layers, stats_of["host"].layers,
                                                stats_of["device"].layers):
        elems = int(np.prod(shape))
        requant = layer.out_scale is not None
        rows.append({"layer": layer.name, "out_shape": list(shape), "requantized": requant,
                     "cycles_host": sh.cycles, "cycles_device": sd.cycles,
                     "activation_bytes_int32": 4 * elems,
                     "activation_bytes_device": (1 if requant else 4) * elems})
    return {"images": images, "rounds": rounds,
            "median_s": {k: statistics.median(v) for k, v in times.items()},
            "min_s": {k: min(v) for k, v in times.items()},
            "median_host_s": {k: statistics.median(v) for k, v in host.items()},
            "cycles": {k: st.cycles for k, st in stats_of.items()}, "layers": rows,
            "load": os.getloadavg()[0]}


def report(r: dict, command: str) -> str:
    lines = [
        "# Requantization on the cores' output stage vs. on the host",
        "",
        f"Date: {_dt.date.today().isoformat()}. Machine: {_machine()}; load average at the "
        f"end {r['load']:.1f}. Command: `{command}`.",
        "",
        f"Seed CNN (initial weights), {r['images']} digit images per forward, fpga backend "
        "(Verilator models of the 16x16 int8 conv2d and matmul cores), medians of "
        f"{r['rounds']} alternating rounds; both ways bit-exact with `QuantizedNet.reference`.",
        "",
        "| way | forward wall s, median (min) | host share s | core cycles |",
        "|---|---|---|---|",
    ]
    for k in ("host", "device"):
        lines.append(f"| {k} | {r['median_s'][k]:.3f} ({r['min_s'][k]:.3f}) | "
                     f"{r['median_host_s'][k]:.4f} | {r['cycles'][k]:,} |")
    lines += ["", "| layer | output | requantized | cycles host / device | activation "
              "bytes int32 / now | c-stream bytes |", "|---|---|---|---|---|---|"]
    for row in r["layers"]:
        lines.append(f"| {row['layer']} | {tuple(row['out_shape'])} | {row['requantized']} | "
                     f"{row['cycles_host']:,} / {row['cycles_device']:,} | "
                     f"{row['activation_bytes_int32']:,} / {row['activation_bytes_device']:,} | "
                     "same both ways (one value per 32-bit lane) |")
    lines += ["", "Wall time is almost all the simulator's (the C++ harness clocking the "
              "models): it does not project a board, and on this shared machine it moves "
              "with the load more than between the two ways. Both ways run the layers' "
              "ReLU in the output stage, so the core cycles are the same (each job 6 more "
              "than without the stage, REQUANT_DELAY); the host share is pooling and "
              "flatten, plus NumPy requantization on the host way."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", help="write the report here (markdown)")
    args = p.parse_args(argv)
    r = measure(args.images, args.rounds)
    text = report(r, "python benchmarks/bench_requant.py " + " ".join(argv or sys.argv[1:]))
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
