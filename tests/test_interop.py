"""DLPack interop: PyTorch tensors in, PyTorch tensors out, without copies of the inputs."""
import numpy as np
import pytest

import lepton_accel as la
from lepton_accel.arrays import as_view
from lepton_accel.reference import matmul_ref, relative_error

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("tdtype,name", [(torch.float32, "float32"), (torch.float16, "float16"),
                                          (torch.bfloat16, "bfloat16"), (torch.int8, "int8")])
def test_torch_view_shares_memory(tdtype, name):
    t = (torch.randn(6, 10) * 50).to(tdtype)
    v = as_view(t[:, ::3], "a")
    assert v.dtype == name and v.shape == (6, 4) and v.strides == (10, 3)
    t[0, 3] = 7  # element (0, 1) of the strided view
    assert float(v.host[0, 1]) == 7.0


def test_torch_in_torch_out_bfloat16():
    a = torch.randn(33, 17, dtype=torch.bfloat16)
    b = torch.randn(40, 17, dtype=torch.bfloat16).T  # transposed, not copied
    out = la.matmul(a, b, activation="gelu")
    assert isinstance(out, torch.Tensor) and out.dtype == torch.bfloat16
    ref = matmul_ref(a.float().numpy(), b.float().numpy(), activation="gelu")
    assert relative_error(out.float().numpy(), ref) < 1e-2


def test_torch_conv2d_int8():
    x = torch.randint(-128, 128, (2, 9, 9, 4), dtype=torch.int8)
    w = torch.randint(-128, 128, (6, 4, 3, 3), dtype=torch.int8)
    out = la.conv2d(x, w, layout="NHWC", padding="same")
    assert isinstance(out, torch.Tensor) and out.dtype == torch.int32
    ref = torch.nn.functional.conv2d(x.permute(0, 3, 1, 2).double(), w.double(), padding="same")
    np.testing.assert_array_equal(out.numpy(), ref.permute(0, 2, 3, 1).numpy().astype(np.int64))
