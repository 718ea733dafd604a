"""Fixtures and helpers the fpga backend tests share (no tests of its own).

``small_core`` (import it into a test module to use it there, it is autouse) runs that
module's tests on a 4x4 core with a 64-word conv image memory, restoring the backend's
configuration afterwards; ``ints`` draws random integer operands, never all zero.
"""
from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.sim

from lepton_accel.fpga.toolchain import toolchain_missing  # noqa: E402

_missing = toolchain_missing()
if _missing:
    pytest.skip(f"fpga backend unavailable: {_missing}", allow_module_level=True)

from lepton_accel import fpga  # noqa: E402

SIZE = (4, 4)
DEPTH = 64


@pytest.fixture(autouse=True)
def small_core():
    with fpga.configured(*SIZE, conv_depth=DEPTH, enabled=True):
        yield


def ints(rng, shape, dtype="int8"):
    info = np.iinfo(dtype)
    v = rng.integers(info.min, info.max + 1, shape, dtype=dtype)
    if v.size and not v.any():
        v.flat[0] = 1
    return v
