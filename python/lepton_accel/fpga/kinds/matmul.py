"""The matmul core: an R x C output-stationary systolic array computing A @ B (+ bias)
(``lepton_accel.hdl.matmul_top``; host protocol in ``hdl.matmul_regmap``)."""
from __future__ import annotations

from dataclasses import dataclass

from lepton_accel.hdl import matmul_regmap

from ..matmul_driver import MatmulDriver
from . import CoreConfig, register

__all__ = ["MatmulConfig"]


@register
@dataclass(frozen=True)
class MatmulConfig(CoreConfig):
    """The matmul core of an R x C array of int8 or int16 inputs."""

    kind = "matmul"
    op = "matmul"
    top = "lepton_matmul"
    regmap_module = "lepton_accel.hdl.matmul_regmap"
    testbench = "matmul_tb"
    driver = MatmulDriver

    def describe(self) -> dict:
        return matmul_regmap.describe(self.rows, self.cols, self.dtype, self.out_stage)

    def generate_verilog(self, name: str | None = None) -> str:
        from lepton_accel.hdl.matmul_top import generate_verilog

        return generate_verilog(self.rows, self.cols, self.dtype, name=name or self.top,
                                out_stage=self.out_stage)
