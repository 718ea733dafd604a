"""The Backend protocol every backend module implements."""
from __future__ import annotations

from typing import Protocol, runtime_checkable

from ..arrays import ArrayView
from ..spec import OpSpec


class BackendUnavailable(RuntimeError):
    """A backend was asked for explicitly but cannot run here (the message says why)."""


class UnsupportedOperation(ValueError):
    """A backend was asked for explicitly but does not support this operation."""


@runtime_checkable
class Backend(Protocol):
    name: str

    def available(self) -> tuple[bool, str]:
        """(True, "") when usable here, else (False, why not)."""

    def supports(self, spec: OpSpec, operands: list[ArrayView] | None = None) -> tuple[bool, str]:
        """Whether this backend runs ``spec`` (on these operands' devices), and why not."""

    def estimate(self, spec: OpSpec, operands: list[ArrayView] | None = None) -> float:
        """Seconds this backend would take, transfers included."""

    def run(self, spec: OpSpec, operands: list[ArrayView]):
        """Compute the result; returns the caller's kind of array."""
