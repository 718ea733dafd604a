"""The `lepton-accel` command."""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import time

import numpy as np

# Feature packages that add their own sub-commands through add_commands(subparsers).
_COMMAND_MODULES = ("lepton_accel.hdl.cli", "lepton_accel.scheduler.cli")


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def cmd_info(args) -> int:
    import lepton_accel as la

    info = la.build_info()
    print("lepton_accel", info["version"])
    print(_table([[k, str(v)] for k, v in info.items() if k != "version"], ["build", "value"]))
    print()
    rows = [[b["name"], "yes" if b["available"] else "no", b["reason"]] for b in la.backends()]
    print(_table(rows, ["backend", "available", "why not"]))
    from ._native import core, cuda_compiled

    if cuda_compiled() and core.cuda_device_count() > 0:
        print()
        devs = []
        for i in range(core.cuda_device_count()):
            p = core.cuda_device_props(i)
            devs.append([f"cuda:{i}", p["name"], "sm_%d%d" % p["compute_capability"],
                         str(p["sm_count"]), f"{p['total_memory'] / 2**30:.1f} GiB"])
        print(_table(devs, ["device", "name", "arch", "SMs", "memory"]))
    return 0


def _demo_cases(rng):
    """A small matmul and conv2d per dtype, at awkward sizes (primes, not tile multiples)."""
    import lepton_accel as la

    def operand(shape, dtype):
        if dtype == "int8":
            return rng.integers(-128, 128, shape, dtype=np.int8)
        return rng.standard_normal(shape).astype(la.dtypes.DTYPES[dtype])

    for dtype in ("float32", "float16", "bfloat16", "int8"):
        a, b = operand((67, 131), dtype), operand((131, 45), dtype)
        bias = operand((45,), "float32" if dtype != "int8" else "int8").astype(
            np.int32 if dtype == "int8" else np.float32)
        yield ("matmul", dtype, dict(a=a, b=b, bias=bias, activation="relu"))
        x, w = operand((2, 11, 12, 13), dtype), operand((8, 13, 3, 3), dtype)
        yield ("conv2d", dtype, dict(x=x, w=w, stride=2, padding=1, layout="NHWC",
                                     activation="relu"))


def cmd_demo(args) -> int:
    """Run a verified matmul and conv2d per dtype on every available backend."""
    import lepton_accel as la
    from . import reference
    from .dtypes import dtype_name
    from .ops import get_op

    rng = np.random.default_rng()
    rows, failures = [], 0
    for backend in [b["name"] for b in la.backends() if b["available"]]:
        for op, dtype, kw in _demo_cases(rng):
            opdef = get_op(op)
            arrays = [kw[n] for n in opdef.operands]
            bias = kw.get("bias")
            params = {k: v for k, v in kw.items() if k not in opdef.operands + ("bias", "activation")}
            spec = opdef.spec(tuple(a.shape for a in arrays), (dtype, dtype),
                              bias_shape=None if bias is None else bias.shape,
                              bias_dtype=None if bias is None else dtype_name(bias.dtype),
                              activation=kw.get("activation"), **params)
            t0 = time.perf_counter()
            try:
                out = getattr(la, op)(**kw, backend=backend)
            except la.UnsupportedOperation as exc:
                why = str(exc).split(": ", 2)[-1].split(";")[0]
                rows.append([backend, op, dtype, "-", "-", f"not supported: {why}"])
                continue
            ms = (time.perf_counter() - t0) * 1e3
            res = reference.check(spec, out, reference.reference(spec, arrays, bias))
            ok = res["verified"]
            err = ("exact" if ok else "MISMATCH") if res["tolerance"] is None else f"{res['rel_err']:.2e}" \
                if res["rel_err"] is not None else "non-finite"
            verdict = "ok" if ok else f"FAILED ({res['why']})"
            failures += not ok
            rows.append([backend, op, dtype, err, f"{ms:.1f}", verdict])
    print(_table(rows, ["backend", "op", "dtype", "rel. error", "ms", "result"]))
    print(f"\n{len(rows) - failures} passed, {failures} failed")
    return 1 if failures else 0


def cmd_bench(args) -> int:
    """The pytest-benchmark suites of a source checkout, side by side with their peers;
    with --plot, a roofline picture of the run."""
    import tempfile
    from pathlib import Path

    import pytest

    if not Path("benchmarks", "conftest.py").is_file():
        print("lepton-accel bench: run it from a checkout of lepton_accel (no ./benchmarks here)",
              file=sys.stderr)
        return 2
    extra = list(args.pytest_args)
    run_json = None
    if args.plot:
        run_json = Path(tempfile.mkdtemp()) / "run.json"
        extra.append(f"--benchmark-json={run_json}")
    rc = pytest.main(["benchmarks", "--benchmark-only", "-m", "", "-q", *extra])
    if args.plot and run_json.is_file():
        sys.path.insert(0, "benchmarks")
        import roofline

        n = roofline.plot(json.loads(run_json.read_text()), args.plot)
        print(f"lepton-accel bench: roofline of {n} benchmarks written to {args.plot}")
    return rc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lepton-accel", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="build info, backends and devices").set_defaults(func=cmd_info)
    sub.add_parser("demo", help="a verified matmul and conv2d on every available backend"
                   ).set_defaults(func=cmd_demo)
    p = sub.add_parser("bench", help="run the benchmark suites (pytest-benchmark)")
    p.add_argument("--plot", metavar="PNG", help="also write a roofline picture of the run")
    p.add_argument("pytest_args", nargs="*", help="extra pytest arguments, e.g. -k matmul")
    p.set_defaults(func=cmd_bench)
    for module in _COMMAND_MODULES:
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue  # that feature is not installed (e.g. the sim extra)
        mod.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
