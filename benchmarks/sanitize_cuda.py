"""Representative CUDA matmul launches for compute-sanitizer:

    compute-sanitizer --tool memcheck  python benchmarks/sanitize_cuda.py
    compute-sanitizer --tool racecheck python benchmarks/sanitize_cuda.py
    compute-sanitizer --tool synccheck python benchmarks/sanitize_cuda.py

Every kernel family (generic, simt, mma, wgmma) and dtype runs on small shapes that
hit edge tiles, several k-tiles, transposed and strided operands and the epilogue;
each result is also checked against float64 NumPy, so the script fails (exit 1) on a
wrong answer as well as the sanitizer reporting an error. Shapes stay small: the
sanitizer slows kernels down by orders of magnitude.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import test_cuda_matmul as t  # noqa: E402  (reuses the test harness: operands, reference, poison)


def main() -> int:
    if t.SKIP_REASON:
        print(f"sanitize_cuda: {t.SKIP_REASON}", file=sys.stderr)
        return 2
    rng = np.random.default_rng()
    cc = t.compute_capability()
    cases = [
        dict(M=130, N=260, K=200, a_layout="row", b_layout="col", bias=True, activation=t.GELU),
        dict(M=67, N=45, K=72, a_layout="col", b_layout="row", bias=True, activation=t.RELU),
        dict(M=33, N=17, K=9, a_layout="offset", b_layout="strided"),
        dict(M=64, N=80, K=96, batch=2, a_layout="ld", b_layout="col_ld", c_layout="col"),
    ]
    failures = 0
    for kernel in ["generic", "simt", "mma", "wgmma"]:
        for name, ind, outd, tf32, tol in t.DTYPES:
            for case in cases:
                kw = dict(case)
                if ind == t.I8 and kw.get("activation") == t.GELU:
                    kw["activation"] = t.RELU
                got, err, intact = t.run_case(rng, in_dtype=ind, out_dtype=outd, tf32=tf32,
                                              kernel=kernel, **kw)
                ok = intact and (err == 0 if tol == 0 else err < tol)
                failures += not ok
                print(f"{'ok  ' if ok else 'FAIL'} {kernel:7s} {name:8s} {kw['M']}x{kw['N']}x{kw['K']} "
                      f"{kw['a_layout']}/{kw['b_layout']} -> {got} err={err:.2e} intact={intact}")
    print(f"sanitize_cuda: {failures} failure(s); device cc {cc}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
