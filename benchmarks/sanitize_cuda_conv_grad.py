"""Representative CUDA conv2d-gradient launches for compute-sanitizer:

    compute-sanitizer --tool memcheck  python benchmarks/sanitize_cuda_conv_grad.py
    compute-sanitizer --tool racecheck python benchmarks/sanitize_cuda_conv_grad.py
    compute-sanitizer --tool synccheck python benchmarks/sanitize_cuda_conv_grad.py

Both gradients (grad-input, grad-weight), both families (generic, simt: its shared
tables, double-buffered k-step table and split-K reduction), every float dtype and both
layouts, on small shapes with ragged tiles, strides, dilation, groups, depthwise and
padded (gapped) buffers; each result is also checked against the op's float64 reference
with the output poisoned beforehand, so the script fails (exit 1) on a wrong answer as
well as the sanitizer reporting an error. Exit 2: no CUDA device (or the gradient ops
are not in this tree).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import test_cuda_conv2d_grad as t  # noqa: E402  (the test harness: buffers, poison, reference)

from lepton_accel.reference import check  # noqa: E402

CASES = [
    ("dense_3x3_ragged", t.Geo(2, 24, 9, 7, 40, 3, 3, pad=(1, 1)), 0),
    ("s2_dil2_5x3", t.Geo(1, 16, 12, 11, 70, 5, 3, stride=(2, 2), pad=(2, 1), dilation=(1, 2)), 0),
    ("grouped_g2_1x1", t.Geo(3, 32, 6, 5, 24, 1, 1, groups=2), 3),
    ("depthwise_3x3", t.Geo(2, 48, 7, 9, 48, 3, 3, pad=(1, 1), groups=48), 0),
    ("split_k", t.Geo(4, 16, 16, 16, 32, 3, 3, pad=(1, 1)), 0),
    ("same_4x4", t.Geo(1, 17, 8, 9, 20, 4, 4, same=True), 5),
]


def main() -> int:
    if t.SKIP_REASON:
        print(f"sanitize_cuda_conv_grad: {t.SKIP_REASON}", file=sys.stderr)
        return 2
    if "conv2d_grad_input" not in t.OPS:
        print("sanitize_cuda_conv_grad: the conv2d_grad ops are not in this tree", file=sys.stderr)
        return 2
    rng = np.random.default_rng()
    failures = 0
    for family in ["generic", "simt"]:
        for dt_name, dtype, out_dtype in t.FLOAT_DTYPES:
            for layout in ["NCHW", "NHWC"]:
                for case_name, geo, gap in CASES:
                    for spec, name, out, intact, ref in t.run_on_device(rng, geo, layout, "OIHW", dtype,
                                                                        out_dtype, family, gap):
                        verdict = check(spec, out, ref)
                        ok = intact and verdict["verified"]
                        failures += not ok
                        print(f"{'ok  ' if ok else 'FAIL'} {family:7s} {dt_name:8s} {layout} {case_name:18s} "
                              f"-> {name} err={verdict['rel_err']} intact={intact}")
    print(f"sanitize_cuda_conv_grad: {failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
