"""Random operands for the tests."""
import numpy as np

from lepton_accel.dtypes import DTYPES


def random_operand(rng: np.random.Generator, shape, dtype: str, layout: str = "c") -> np.ndarray:
    """Random values (never all zero) in the requested memory layout.

    layout "c": contiguous; "t": the transpose of a contiguous array of the reversed
    last two dims (column-major); "s": every other element of a larger array (strided).
    """
    shape = tuple(shape)

    def values(shp):
        if dtype in ("int8", "int16"):
            info = np.iinfo(dtype)
            v = rng.integers(info.min, info.max + 1, shp, dtype=dtype)
        else:
            v = rng.standard_normal(shp).astype(DTYPES[dtype])
        if v.size and not v.any():
            v.flat[0] = 1
        return v

    if layout == "t" and len(shape) >= 2:
        base = values(shape[:-2] + (shape[-1], shape[-2]))
        return np.swapaxes(base, -1, -2)
    if layout == "s" and len(shape) >= 1:
        base = values(shape[:-1] + (2 * shape[-1],))
        return base[..., ::2]
    return values(shape)
