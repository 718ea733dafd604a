"""The kinds of FPGA core, one module each, in a registry.

A kind is a :class:`CoreConfig` subclass: its fields are the kind's build parameters
(array rows and columns, input dtype, and whatever else the kind has, e.g. the conv2d
core's image memory), and its class attributes and methods say everything the host side
needs to know about it in one place:

* ``kind``: its name; ``op``: the op it runs natively (``lepton_accel.ops``);
* ``top``, :meth:`~CoreConfig.generate_verilog`: the Verilog top module of ``lepton_accel.hdl``;
* ``regmap`` (the register map module) and :meth:`~CoreConfig.describe`: its registers
  and its stream layout (names, directions, beat widths, in register-map order), from
  which the model wrapper, the C++ port table and the device's stream checks are made;
* ``driver``: the host driver class (:mod:`..matmul_driver`, :mod:`..conv_driver`);
* ``testbench``: the cocotb testbench module in ``sim/`` that verifies it;
* :meth:`~CoreConfig.from_settings`: its configuration under the session's settings.

Adding a kind is a module here (registered with :func:`register`), its driver, its HDL
and its testbench; the build, the device, the session and the testbench harness need no
change.
"""
from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

__all__ = ["CoreConfig", "KINDS", "register", "get_kind", "kind_for_op", "MatmulConfig",
           "Conv2dConfig"]

#: kind name -> its CoreConfig subclass
KINDS: dict[str, type["CoreConfig"]] = {}


@dataclass(frozen=True)
class CoreConfig:
    """One configuration of a core kind: an R x C array of ``dtype`` inputs (subclasses
    add the kind's own parameters). Validated on creation (``ValueError``)."""

    rows: int = 16
    cols: int = 16
    dtype: str = "int8"
    #: build the output stage (ReLU / requantization on the core); without it the host
    #: applies them and the core is smaller and faster (keyword only)
    out_stage: bool = field(default=True, kw_only=True)

    kind: ClassVar[str] = ""
    op: ClassVar[str] = ""
    top: ClassVar[str] = ""
    regmap_module: ClassVar[str] = ""
    testbench: ClassVar[str] = ""
    driver: ClassVar[Any] = None

    def __post_init__(self):
        if not isinstance(self.out_stage, bool):
            raise TypeError(f"out_stage: expected True or False, got {self.out_stage!r}")
        if not self.kind:
            raise TypeError("CoreConfig is abstract: use a kind (MatmulConfig, Conv2dConfig)")
        self.describe()  # raises ValueError for a configuration the core does not have

    # ---- what the kind defines ---------------------------------------------------------
    def describe(self) -> dict:
        """The register map's JSON description of this configuration."""
        raise NotImplementedError

    def generate_verilog(self, name: str | None = None) -> str:
        """Verilog of this configuration, top module ``name`` (default :attr:`top`)."""
        raise NotImplementedError

    @classmethod
    def from_settings(cls, settings, dtype: str) -> "CoreConfig":
        """This kind's configuration for ``dtype`` inputs under the session's settings
        (:class:`..session.Settings`)."""
        return cls(settings.rows, settings.cols, dtype)

    # ---- derived -------------------------------------------------------------------------
    @property
    def regmap(self):
        """The kind's register map module (``lepton_accel.hdl.<core>_regmap``)."""
        return importlib.import_module(self.regmap_module)

    def params(self) -> dict[str, Any]:
        """The build parameters, by name (rows, cols, dtype, then the kind's own)."""
        return asdict(self)

    def streams(self) -> list[dict]:
        """The stream ports in register-map order: name, direction ("in"/"out"),
        tdata width in bits, Verilog prefix (from :meth:`describe`)."""
        return [{"name": s["name"], "direction": s["direction"], "bits": s["tdata_width"],
                 "prefix": s["prefix"]} for s in self.describe()["streams"]]

    def _tag_extra(self) -> str:
        return ""

    @property
    def tag(self) -> str:
        """Short name of the configuration (cache directories, messages)."""
        stage = "" if self.out_stage else "-nostage"
        return f"{self.kind}-r{self.rows}c{self.cols}-{self.dtype}{self._tag_extra()}{stage}"


def register(cls: type[CoreConfig]) -> type[CoreConfig]:
    """Class decorator: add a kind to :data:`KINDS`."""
    if not cls.kind or cls.kind in KINDS:
        raise ValueError(f"core kind {cls.kind!r} is unnamed or registered twice")
    KINDS[cls.kind] = cls
    return cls


def get_kind(name: str) -> type[CoreConfig]:
    try:
        return KINDS[name]
    except (KeyError, TypeError):
        raise ValueError(f"kind: expected one of {sorted(KINDS)}, got {name!r}") from None


def kind_for_op(op: str) -> type[CoreConfig] | None:
    """The kind that runs ``op`` natively, or None."""
    for cls in KINDS.values():
        if cls.op == op:
            return cls
    return None


from .matmul import MatmulConfig  # noqa: E402  (registers the kinds)
from .conv2d import Conv2dConfig  # noqa: E402
