"""Drop-in ``Conv2d`` and ``Linear`` layers on our ops, and :func:`convert`.

Each takes PyTorch's constructor arguments and keeps its parameters under the same names
(``weight``, ``bias``), so ``state_dict`` files move between the two freely; two keyword
arguments are ours: ``activation`` (None, "relu", "gelu": fused into the op's epilogue)
and ``backend`` ("auto" or a backend name, as in the core API).
"""
from __future__ import annotations

import torch

from ..backends import get as _get_backend
from ..ops.base import check_activation
from . import functional as F

#: PyTorch activation modules a converted layer can absorb into its epilogue
_FUSABLE = {torch.nn.ReLU: "relu"}
_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def _check_backend(backend) -> str:
    if not isinstance(backend, str):
        raise TypeError(f"backend: expected 'auto' or a backend name, got {type(backend).__name__}")
    if backend != "auto":
        _get_backend(backend)   # ValueError naming the known ones
    return backend


def _activation_of(module) -> str | None:
    if type(module) in _FUSABLE:
        return _FUSABLE[type(module)]
    if type(module) is torch.nn.GELU and module.approximate == "tanh":
        return "gelu"   # our GELU is the tanh form
    return None


class Linear(torch.nn.Linear):
    """torch.nn.Linear on our matmul: ``activation(x @ weight^T + bias)``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None,
                 dtype=None, *, activation=None, backend: str = "auto"):
        super().__init__(in_features, out_features, bias, device, dtype)
        self.activation = check_activation(activation, "float32")
        self.backend = _check_backend(backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias, activation=self.activation,
                        backend=self.backend)

    def extra_repr(self) -> str:
        return (super().extra_repr() + (f", activation={self.activation!r}" if self.activation
                                        else "") + f", backend={self.backend!r}")


class Conv2d(torch.nn.Conv2d):
    """torch.nn.Conv2d (NCHW, zero padding) on our conv2d, bias and activation fused."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 device=None, dtype=None, *, activation=None, backend: str = "auto"):
        if padding_mode != "zeros":
            raise ValueError(f"padding_mode: only 'zeros' runs on our conv2d, got "
                             f"{padding_mode!r}; keep torch.nn.Conv2d for this layer")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, padding_mode, device, dtype)
        self.activation = check_activation(activation, "float32")
        self.backend = _check_backend(backend)
        # [top, bottom, left, right], resolved once (also for 'same' and 'valid')
        self._pads = F.resolve_padding(self.padding, self.kernel_size, self.stride,
                                       self.dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        y = torch.ops.lepton_accel.conv2d(x, self.weight, self.bias, list(self.stride),
                                          self._pads, list(self.dilation), self.groups,
                                          "NCHW", self.activation, self.backend)
        return y.squeeze(0) if unbatched else y

    def extra_repr(self) -> str:
        return (super().extra_repr() + (f", activation={self.activation!r}" if self.activation
                                        else "") + f", backend={self.backend!r}")


def _ours(layer, backend: str):
    """Our layer for a PyTorch one, sharing its Parameter objects (an optimizer built
    before the conversion keeps working), or None where our ops cannot run it."""
    if isinstance(layer, (Conv2d, Linear)):
        return None
    if layer.weight.dtype not in _FLOATS:
        return None
    kw = dict(device="meta", dtype=layer.weight.dtype, backend=backend)
    if type(layer) is torch.nn.Linear:
        new = Linear(layer.in_features, layer.out_features, layer.bias is not None, **kw)
    elif type(layer) is torch.nn.Conv2d and layer.padding_mode == "zeros":
        try:
            new = Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                         layer.padding, layer.dilation, layer.groups, layer.bias is not None,
                         **kw)
        except ValueError:   # e.g. padding beyond the kernel extent, which our ops refuse
            return None
    else:
        return None
    new.weight = layer.weight
    new.bias = layer.bias
    new.train(layer.training)
    return new


def convert(model: torch.nn.Module, *, fuse_activations: bool = True,
            backend: str = "auto") -> torch.nn.Module:
    """Swap every torch.nn.Conv2d (zero padding) and torch.nn.Linear in ``model`` for ours,
    in place, and return the model. The parameters stay the same objects, so the
    ``state_dict`` and any optimizer are unchanged. With ``fuse_activations``, a ReLU (or
    tanh-GELU) module that directly follows a converted layer in a ``Sequential`` moves
    into that layer's epilogue and its slot becomes ``torch.nn.Identity``."""
    _check_backend(backend)
    if isinstance(model, (torch.nn.Conv2d, torch.nn.Linear)):
        raise TypeError("model: convert swaps the layers inside a module; for one layer, "
                        "build lepton_accel.torch.Conv2d/Linear and load its state_dict")
    for name, child in list(model.named_children()):
        if isinstance(child, (torch.nn.Conv2d, torch.nn.Linear)):
            new = _ours(child, backend)
            if new is not None:
                setattr(model, name, new)
        else:
            convert(child, fuse_activations=fuse_activations, backend=backend)
    if fuse_activations and isinstance(model, torch.nn.Sequential):
        names = list(model._modules)
        for prev, name in zip(names, names[1:]):
            layer, act = model._modules[prev], _activation_of(model._modules[name])
            if isinstance(layer, (Conv2d, Linear)) and layer.activation is None and act:
                layer.activation = act
                model._modules[name] = torch.nn.Identity()
    return model


__all__ = ["Conv2d", "Linear", "convert"]
