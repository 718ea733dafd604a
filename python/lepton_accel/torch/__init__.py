"""PyTorch integration: our ops as differentiable PyTorch operators, drop-in layers, and
the seed's CNN trained on them.

    >>> import torch, lepton_accel.torch as lt
    >>> model = lt.convert(torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU()))
    >>> model(torch.randn(3, 8)).shape
    torch.Size([3, 4])

Needs PyTorch (the ``torch`` extra); ``import lepton_accel`` never imports this package.
Submodules: :mod:`.functional` (the operators), :mod:`.nn` (``Conv2d``, ``Linear``,
``convert``), :mod:`.cnn` (the seed's CNN, its data and ``train``) and, where present,
``quantize`` (loaded on first use).
"""
from __future__ import annotations

import importlib

try:
    import torch as _torch  # noqa: F401  (the top-level PyTorch, not this package)
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError("lepton_accel.torch needs PyTorch: pip install 'lepton_accel[torch]' "
                      "(torch==2.13.0, the CPU build)") from exc

from .functional import conv2d, linear, matmul, resolve_padding
from .nn import Conv2d, Linear, convert

_LAZY = ("cnn", "quantize")


def __getattr__(name):
    if name in _LAZY:
        try:
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}":
                raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["matmul", "linear", "conv2d", "resolve_padding", "Conv2d", "Linear", "convert"]
