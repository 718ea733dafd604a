"""The instance catalog: which machine types exist, what they hold, what they cost.

The shipped catalog (``data/catalog.yaml``) carries its date and source. A user file
(``LEPTON_ACCEL_CATALOG`` or an explicit path) replaces or adds types by name and may change
the billing rule or the start-up assumptions. Each type's accelerator names a device of
:mod:`lepton_accel.perf`, so placement costs every type with the same model that dispatch
uses; CPU types scale the host CPU's per-core figures to the type's vCPUs.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..perf import DEVICES, DeviceSpec

ENV_CATALOG = "LEPTON_ACCEL_CATALOG"


@dataclass(frozen=True)
class InstanceType:
    name: str
    kind: str                       # "cpu" | "gpu" | "fpga"
    vcpus: int
    memory_gib: float
    price_per_hour: float
    accelerator: str | None = None  # a perf device name (A10G, H100-SXM, VU47P, ...)
    accelerator_count: int = 0
    retired: str | None = None      # date the cloud retired the type, if it did
    startup_s: float = 60.0         # boot-to-ready assumption for a new node
    source: str = ""
    network_gbps: float | None = None   # per node, the published maximum (a data-parallel job's all-reduce)
    spot_price_per_hour: float | None = None     # None: no spot capacity assumed for the type
    interruptions_per_hour: float = 0.0          # spot: reclaims per node-hour (an assumption)

    @property
    def family(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def slots(self) -> int:
        """Jobs one node runs at once: one per accelerator, one for a CPU type."""
        return max(self.accelerator_count, 1)

    @property
    def price_per_second(self) -> float:
        return self.price_per_hour / 3600.0

    @property
    def spot_price_per_second(self) -> float | None:
        return None if self.spot_price_per_hour is None else self.spot_price_per_hour / 3600.0

    @property
    def slot_price_per_second(self) -> float:
        return self.price_per_second / self.slots

    def device(self) -> DeviceSpec:
        """The perf-model device one slot of this type runs a job on."""
        if self.kind != "cpu":
            return DEVICES[self.accelerator]
        host = DEVICES["host-cpu"]
        local = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        cores = max(self.vcpus // 2, 1)       # two vCPUs per physical core
        peak = {dt: rate / local * cores for dt, rate in host.peak.items()}
        return replace(host, name=f"cpu:{self.name}", peak=peak)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "vcpus": self.vcpus,
                "memory_gib": self.memory_gib, "price_per_hour": self.price_per_hour,
                "accelerator": self.accelerator, "accelerator_count": self.accelerator_count,
                "retired": self.retired, "startup_s": self.startup_s, "source": self.source,
                "network_gbps": self.network_gbps, "spot_price_per_hour": self.spot_price_per_hour,
                "interruptions_per_hour": self.interruptions_per_hour}


@dataclass(frozen=True)
class Billing:
    granularity_s: float = 1.0
    minimum_s: float = 60.0

    def billed_seconds(self, seconds: float) -> float:
        """Seconds charged for a node that lived ``seconds``: rounded up, at least the minimum."""
        g = self.granularity_s
        return max(math.ceil(seconds / g - 1e-9) * g, self.minimum_s)


@dataclass(frozen=True)
class Catalog:
    types: dict[str, InstanceType]
    billing: Billing = field(default_factory=Billing)
    date: str = ""
    region: str = ""
    source: str = ""
    spot_date: str = ""             # when the spot figures were set, and from what
    spot_source: str = ""

    def __getitem__(self, name: str) -> InstanceType:
        try:
            return self.types[name]
        except KeyError:
            raise KeyError(f"unknown instance type {name!r}; known: {', '.join(self.types)}") from None

    def __iter__(self):
        return iter(self.types.values())

    def usable(self, include_retired: bool = False) -> list[InstanceType]:
        return [t for t in self.types.values() if include_retired or not t.retired]

    def launch_cost(self, itype: InstanceType | str, seconds: float, spot: bool = False) -> float:
        """Cost of launching one node of ``itype`` for ``seconds`` (minimum billing applies),
        at its spot price with ``spot``."""
        t = self[itype] if isinstance(itype, str) else itype
        rate = t.spot_price_per_second if spot else t.price_per_second
        if rate is None:
            raise ValueError(f"spot: {t.name} has no spot price in the catalog")
        return rate * self.billing.billed_seconds(seconds)


# ---- loading --------------------------------------------------------------------------
def _read(path) -> dict:
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a catalog must be a mapping with 'types'")
    return data


def _shipped() -> dict:
    return yaml.safe_load(resources.files(__package__).joinpath("data/catalog.yaml").read_text())


def _parse_spot(name: str, raw, kind: str, rates: dict, where: str) -> tuple[float | None, float]:
    """(spot price per hour, interruptions per node-hour) of a type's ``spot`` entry."""
    if raw is None:
        return None, 0.0
    if not isinstance(raw, dict) or "price_per_hour" not in raw:
        raise ValueError(f"{where}: types.{name}.spot: expected a mapping with price_per_hour")
    price = float(raw["price_per_hour"])
    rate = float(raw.get("interruptions_per_hour", rates.get(kind, 0.0)))
    if price < 0:
        raise ValueError(f"{where}: types.{name}.spot.price_per_hour: must be >= 0")
    if rate < 0:
        raise ValueError(f"{where}: types.{name}.spot.interruptions_per_hour: must be >= 0")
    return price, rate


def _parse_type(name: str, raw: dict, startup: dict, where: str, rates: dict | None = None) -> InstanceType:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: types.{name}: expected a mapping")
    for key in ("vcpus", "memory_gib", "price_per_hour"):
        if key not in raw:
            raise ValueError(f"{where}: types.{name}.{key}: missing")
    acc = raw.get("accelerator")
    model, count, kind = None, 0, "cpu"
    if acc:
        model, count = acc.get("model"), int(acc.get("count", 1))
        if model not in DEVICES:
            raise ValueError(f"{where}: types.{name}.accelerator.model: unknown device {model!r}; "
                             f"known: {', '.join(d for d in DEVICES if d != 'host-cpu')}")
        kind = DEVICES[model].kind
    price = float(raw["price_per_hour"])
    if price < 0:
        raise ValueError(f"{where}: types.{name}.price_per_hour: must be >= 0")
    spot_price, interruptions = _parse_spot(name, raw.get("spot"), kind, rates or {}, where)
    return InstanceType(
        name=name, kind=kind, vcpus=int(raw["vcpus"]), memory_gib=float(raw["memory_gib"]),
        price_per_hour=price, accelerator=model, accelerator_count=count,
        retired=str(raw["retired"]) if raw.get("retired") else None,
        startup_s=float(raw.get("startup_s", startup.get(kind, 60.0))),
        source=str(raw.get("source", "")),
        network_gbps=float(raw["network_gbps"]) if raw.get("network_gbps") is not None else None,
        spot_price_per_hour=spot_price, interruptions_per_hour=interruptions)


def load_catalog(path: str | os.PathLike | None = None, *, use_env: bool = True) -> Catalog:
    """The shipped catalog, with ``path`` (or ``$LEPTON_ACCEL_CATALOG``) merged over it."""
    data = _shipped()
    overlays = []
    if use_env and os.environ.get(ENV_CATALOG):
        overlays.append(os.environ[ENV_CATALOG])
    if path is not None:
        overlays.append(path)
    where = {name: "catalog.yaml" for name in data["types"]}
    for p in overlays:
        user = _read(p)
        if user.get("replace"):            # a complete catalog, not an overlay
            data = {"types": {}, "billing": {}, "defaults": {}}
        for name, raw in (user.get("types") or {}).items():
            data["types"][name] = raw
            where[name] = str(Path(p).name)
        data.setdefault("billing", {}).update(user.get("billing") or {})
        for k, v in (user.get("defaults") or {}).items():
            if isinstance(v, dict):
                data.setdefault("defaults", {}).setdefault(k, {}).update(v)
            else:
                data.setdefault("defaults", {})[k] = v
        for k in ("date", "source", "region", "spot_date", "spot_source"):
            if k in user:
                data[k] = user[k]
    startup = (data.get("defaults") or {}).get("startup_s", {})
    rates = (data.get("defaults") or {}).get("interruptions_per_hour", {})
    types = {name: _parse_type(name, raw, startup, where.get(name, "catalog"), rates)
             for name, raw in data["types"].items() if raw is not None}
    default_source = data.get("source", "").strip()
    types = {n: (t if t.source else replace(t, source=default_source)) for n, t in types.items()}
    b = data.get("billing") or {}
    return Catalog(types=types,
                   billing=Billing(float(b.get("granularity_s", 1)), float(b.get("minimum_s", 60))),
                   date=str(data.get("date", "")), region=str(data.get("region", "")),
                   source=default_source, spot_date=str(data.get("spot_date", "")),
                   spot_source=" ".join(str(data.get("spot_source", "")).split()))
