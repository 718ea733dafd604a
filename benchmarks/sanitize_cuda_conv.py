"""Representative CUDA conv2d launches for compute-sanitizer:

    compute-sanitizer --tool memcheck  python benchmarks/sanitize_cuda_conv.py
    compute-sanitizer --tool racecheck python benchmarks/sanitize_cuda_conv.py
    compute-sanitizer --tool synccheck python benchmarks/sanitize_cuda_conv.py
    compute-sanitizer --tool initcheck python benchmarks/sanitize_cuda_conv.py

Every kernel family (generic, depthwise, mma, wgmma and the channels-last transform
they may run first; a forced family that cannot run a case falls back as usual, and the
wgmma cases only reach the Hopper kernel on a compute-capability 9.0 device) and every dtype runs on small shapes with ragged tile edges, padding,
strides, dilation, groups, misaligned and strided inputs and padded outputs; each
result is also checked against the float64 reference with the output poisoned
beforehand, so the script fails (exit 1) on a wrong answer as well as the sanitizer
reporting an error. Exit 2: no CUDA device. Shapes stay small: the sanitizer slows
kernels down by orders of magnitude.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import test_cuda_conv2d as t  # noqa: E402  (the test harness: operands, poison, reference)


CASES = [
    ("dense_3x3_ragged", t.case_of(2, 24, 9, 7, 40, 3, 3, padding=1), {}),
    ("dense_5x3_dil_s2", t.case_of(1, 16, 12, 11, 136, 5, 3, stride=2, padding=(2, 1),
                                   dilation=(1, 2)), {}),
    ("grouped_g2_1x1", t.case_of(3, 32, 6, 5, 24, 1, 1, groups=2), {}),
    ("depthwise_3x3", t.case_of(2, 48, 7, 9, 48, 3, 3, padding=1, groups=48), {}),
    ("depthwise_mult2_s2", t.case_of(1, 16, 8, 8, 32, 3, 3, stride=2, padding=1, groups=16), {}),
    ("odd_channels", t.case_of(2, 5, 8, 8, 7, 3, 3, padding="same"), {}),
    ("misaligned_x", t.case_of(1, 32, 6, 6, 16, 3, 3, padding=1), {"x_kind": "offset"}),
    ("strided_x", t.case_of(1, 16, 6, 6, 16, 3, 3, padding=1), {"x_kind": "strided"}),
    # C/groups a multiple of 64, the Hopper kernel's k-step: ragged M (49 pixels) and
    # OC (72), padding, stride and dilation at the edges, two groups, 1x1 with OC 256.
    ("wgmma_3x3_m49_oc72", t.case_of(1, 64, 7, 7, 72, 3, 3, padding=1), {}),
    ("wgmma_g2_s2_dil2", t.case_of(1, 128, 9, 8, 40, 3, 3, stride=2, padding=2, dilation=2,
                                   groups=2), {}),
    ("wgmma_cg192_1x1", t.case_of(2, 192, 5, 6, 256, 1, 1), {}),
]


def main() -> int:
    if t.SKIP_REASON:
        print(f"sanitize_cuda_conv: {t.SKIP_REASON}", file=sys.stderr)
        return 2
    rng = np.random.default_rng()
    failures = 0
    for kernel in ["generic", "depthwise", "mma", "wgmma"]:
        for dt_name, dtype, out_dtype, tol in t.DTYPES:
            for layout in ["NHWC", "NCHW"]:
                for case_name, case, extra in CASES:
                    for w_order in ["ohwi", "oihw"]:
                        act = "relu" if dtype == "int8" else "gelu"
                        name, err, intact = t.run_case(
                            rng, case, dtype=dtype, out_dtype=out_dtype, layout=layout,
                            kernel=kernel, bias=True, activation=act, w_order=w_order,
                            y_kind="padded", **extra)
                        ok = intact and (err == 0 if tol == 0 else err < tol)
                        if kernel == "wgmma" and t.hopper_build() and \
                                t.wgmma_eligible(case, dtype, out_dtype):
                            ok = ok and name.startswith("conv2d_igemm_wgmma_sm90_")
                        failures += not ok
                        print(f"{'ok  ' if ok else 'FAIL'} {kernel:9s} {dt_name:8s} {layout} "
                              f"{case_name:20s} w:{w_order} -> {name} err={err:.2e} intact={intact}")
    print(f"sanitize_cuda_conv: {failures} failure(s); device cc {t.compute_capability()}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
