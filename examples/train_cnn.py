"""Train the seed's CNN on our kernels (convolutions and dense layers on lepton_accel,
pooling and the loss from PyTorch), save it, and plot its curves next to it.

    python examples/train_cnn.py                          # scikit-learn's digits, 16x16
    python examples/train_cnn.py --data DIR               # DIR/train, DIR/test: <label>.<n>.png
    python examples/train_cnn.py --layers torch           # the same network on PyTorch's layers

Writes OUT (the model), OUT with .png (loss/accuracy curves) and .json (metrics). The same
run from Python, or from the scheduler as an entry point: lepton_accel.torch.cnn:train.
"""
from __future__ import annotations

import argparse
import json
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="digits", help="'digits' or a folder with train/ and test/")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--input-size", type=int, default=16)
    ap.add_argument("--channels", type=int, default=1, choices=(1, 3))
    ap.add_argument("--layers", default="lepton", choices=("lepton", "torch"))
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="PyTorch and BLAS threads (0: leave both as they are)")
    ap.add_argument("--out", default="runs/seed_cnn.pt", help="where the trained model goes")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    from lepton_accel.torch import cnn

    try:
        metrics = cnn.train(args.data, epochs=args.epochs, batch_size=args.batch_size,
                            lr=args.lr, input_size=args.input_size, channels=args.channels,
                            layers=args.layers, backend=args.backend, seed=args.seed,
                            threads=args.threads or None, out=args.out,
                            progress=not args.no_progress)
    except (ValueError, TypeError) as exc:
        print(f"train_cnn: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: metrics[k] for k in ("test_accuracy", "test_loss", "steps", "seconds",
                                              "model_path", "curves_png")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
