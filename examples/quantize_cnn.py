"""Quantize the trained seed CNN to int8 and run it on the FPGA cores.

    python examples/train_cnn.py                       # writes runs/seed_cnn.pt (or let this script train one)
    python examples/quantize_cnn.py --model runs/seed_cnn.pt [--images 32] [--backend fpga]

Post-training quantization (lepton_accel.torch.quantize, calibrated on 300 training
images), then the first ``--images`` held-out digits through the int8 network with every
convolution and dense layer on ``--backend`` (default ``fpga``: the Verilator models of
our conv2d and matmul cores), checked logit for logit against the int8 NumPy reference.
The accuracy of the whole held-out split is given for the float model and the int8
reference; the core's cycle count gives the images/s at 250 MHz.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

import lepton_accel as la
from lepton_accel.torch import cnn
from lepton_accel.torch import quantize as qz

CLOCK_HZ = 250e6


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="int8 inference of the seed CNN on our cores")
    p.add_argument("--model", help="a saved SeedCNN (.pt from examples/train_cnn.py); "
                                   "default: train one now")
    p.add_argument("--epochs", type=int, help="training epochs without --model "
                                              "(default: cnn.fit's)")
    p.add_argument("--images", type=int, default=32, help="held-out images on the backend")
    p.add_argument("--backend", default="fpga", help="where the int8 layers run (fpga, cpu)")
    p.add_argument("--calibration", type=int, default=300, help="training images to calibrate on")
    args = p.parse_args(argv)

    if args.model:
        model = cnn.load_model(args.model, layers="torch")
        data = cnn.load_digits(model.config["input_size"])
    else:
        data = cnn.load_digits(cnn.INPUT_SIZE)
        kw = {} if args.epochs is None else {"epochs": args.epochs}
        model, _ = cnn.fit(dataset=data, **kw)
    model.eval()
    xte, yte = data.test.x.numpy(), data.test.y.numpy()

    net = qz.quantize(model, data.train.x[:args.calibration])
    print(net)
    xq = net.quantize_input(xte)
    with torch.no_grad():
        acc_float = (model(data.test.x).argmax(1).numpy() == yte).mean()
    ref = net.reference(xq)
    acc_ref = (net.dequantize_logits(ref).argmax(1) == yte).mean()
    print(f"held-out split ({len(yte)} images): float {100 * acc_float:.2f} %, "
          f"int8 reference {100 * acc_ref:.2f} %")

    be = next(b for b in la.backends() if b["name"] == args.backend)
    if not be["available"]:
        print(f"backend {args.backend!r} is not available here: {be['reason']}")
        return 1
    n = min(args.images, len(yte))
    out, stats = net.run(xq[:n], backend=args.backend)
    exact = np.array_equal(out, ref[:n])
    acc = (net.dequantize_logits(out).argmax(1) == yte[:n]).mean()
    print(f"{n} images on backend={args.backend!r}: accuracy {100 * acc:.2f} %, logits "
          f"{'bit-exact with' if exact else 'DIFFERENT from'} the int8 reference "
          f"({stats.wall_s:.1f} s of simulation, loading the models included)")
    for name, s in stats.layers:
        print(f"  layer {name}: {s.backend}" + (f", {s.cycles:,} cycles" if s.cycles else ""))
    if stats.cycles:
        per = stats.cycles / n
        print(f"core cycles per image: {per:,.0f} -> {CLOCK_HZ / per:,.0f} images/s at 250 MHz")
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
