"""The conv2d core: image memory and hardware im2col in front of the systolic array
(``lepton_accel.hdl.conv_top``; host protocol in ``hdl.conv_regmap``)."""
from __future__ import annotations

from dataclasses import dataclass

from lepton_accel.hdl import conv_regmap

from ..conv_driver import ConvDriver
from . import CoreConfig, register

__all__ = ["Conv2dConfig"]


@register
@dataclass(frozen=True)
class Conv2dConfig(CoreConfig):
    """The conv2d core of an R x C array: ``x_lanes`` image elements per x beat (0: the
    core's default, the power of two >= rows) and ``depth`` words of image memory per row
    copy (capacity x_lanes * depth elements per image)."""

    x_lanes: int = 0
    depth: int = 1024

    kind = "conv2d"
    op = "conv2d"
    top = "lepton_conv2d"
    regmap_module = "lepton_accel.hdl.conv_regmap"
    testbench = "conv_tb"
    driver = ConvDriver

    def __post_init__(self):
        if not self.x_lanes:
            object.__setattr__(self, "x_lanes", conv_regmap.default_x_lanes(self.rows))
        super().__post_init__()

    @classmethod
    def from_settings(cls, settings, dtype: str) -> "Conv2dConfig":
        return cls(settings.rows, settings.cols, dtype, depth=settings.conv_depth)

    def describe(self) -> dict:
        return conv_regmap.describe(self.rows, self.cols, self.dtype, self.x_lanes, self.depth,
                                    out_stage=self.out_stage)

    def generate_verilog(self, name: str | None = None) -> str:
        from lepton_accel.hdl.conv_top import generate_verilog

        return generate_verilog(self.rows, self.cols, self.dtype, self.x_lanes, self.depth,
                                name=name or self.top, out_stage=self.out_stage)

    @property
    def capacity(self) -> int:
        """Image memory in elements."""
        return self.x_lanes * self.depth

    def _tag_extra(self) -> str:
        return f"-xl{self.x_lanes}-d{self.depth}"
