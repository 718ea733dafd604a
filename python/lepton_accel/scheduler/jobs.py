"""Jobs: what the scheduler is asked to run, and the job-file format.

A job is either an operation (``op: matmul | conv2d`` with its operands, validated into an
:class:`~lepton_accel.ops.OpSpec`) or a named suite (a test or benchmark selection to run
on given hardware). Each has a priority (higher runs first), an optional deadline in
seconds from submission, a policy (``min_cost`` or ``min_time``) and constraints on where it
may run. Job files are YAML, checked against :data:`JOB_SCHEMA` (jsonschema) and then by
the OpSpec validators; every error names the field, e.g. ``jobs[2].a.shape``.

Operands are given one of three ways::

    a: {shape: [256, 512], dtype: float32}        # random data from the job's seed
    a: {data: [[1, 2], [3, 4]], dtype: int8}     # inline (small inputs)
    a: {path: inputs/a.npy}                       # a .npy file (path or file:// URI)

A suite never runs a shell: ``tests`` and ``benchmarks`` run pytest with the given
arguments as an argument list; ``shell`` runs a command line only when the caller enabled
it (``allow_shell=True``, ``--allow-shell`` or ``LEPTON_ACCEL_ALLOW_SHELL=1``).
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import jsonschema
import numpy as np
import yaml

from ..dtypes import OPERAND_DTYPES
from ..ops import OpSpec, conv2d_spec, matmul_spec
from .catalog import KINDS

POLICIES = ("min_cost", "min_time")
SUITES = ("tests", "benchmarks", "shell")
ENV_ALLOW_SHELL = "LEPTON_ACCEL_ALLOW_SHELL"

_DTYPE = {"type": "string", "enum": list(OPERAND_DTYPES) + ["int32"]}
_OPERAND = {
    "type": "object",
    "properties": {
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 1},
        "dtype": _DTYPE,
        "data": {"type": "array"},
        "path": {"type": "string", "minLength": 1},
    },
    "additionalProperties": False,
    "oneOf": [
        {"required": ["shape", "dtype"], "not": {"anyOf": [{"required": ["data"]}, {"required": ["path"]}]}},
        {"required": ["data", "dtype"], "not": {"anyOf": [{"required": ["shape"]}, {"required": ["path"]}]}},
        {"required": ["path"], "not": {"anyOf": [{"required": ["data"]}, {"required": ["shape"]}]}},
    ],
}
_INT_OR_PAIR = {"oneOf": [{"type": "integer"},
                          {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2}]}
_STR_LIST = {"type": "array", "items": {"type": "string"}}

#: JSON schema of one job (after workload defaults are merged in)
JOB_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 200},
        "op": {"enum": ["matmul", "conv2d"]},
        "a": _OPERAND, "b": _OPERAND, "x": _OPERAND, "w": _OPERAND, "bias": _OPERAND,
        "activation": {"enum": [None, "relu", "gelu"]},
        "out_dtype": _DTYPE,
        "stride": _INT_OR_PAIR, "dilation": _INT_OR_PAIR, "groups": {"type": "integer", "minimum": 1},
        "padding": {"oneOf": [_INT_OR_PAIR, {"enum": ["same", "valid"]}]},
        "layout": {"enum": ["NCHW", "NHWC"]},
        "seed": {"type": "integer", "minimum": 0},
        "verify": {"type": "boolean"},
        "output": {"type": "string"},
        "suite": {
            "type": "object",
            "properties": {"name": {"enum": list(SUITES)}, "args": _STR_LIST,
                           "command": {"type": "string"}, "timeout_s": {"type": "number", "exclusiveMinimum": 0}},
            "required": ["name"], "additionalProperties": False,
        },
        "estimate_s": {"type": "number", "exclusiveMinimum": 0},
        "priority": {"type": "integer"},
        "deadline_s": {"type": "number", "exclusiveMinimum": 0},
        "policy": {"enum": list(POLICIES)},
        "constraints": {
            "type": "object",
            "properties": {
                "kind": {"oneOf": [{"enum": list(KINDS)}, {"type": "array", "items": {"enum": list(KINDS)}}]},
                "models": _STR_LIST,
                "instance_types": _STR_LIST,
                "include_retired": {"type": "boolean"},
            },
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
    "oneOf": [{"required": ["op"], "not": {"required": ["suite"]}},
              {"required": ["suite"], "not": {"required": ["op"]}}],
}

#: JSON schema of a workload file: a list of jobs with optional shared defaults
WORKLOAD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "defaults": {"type": "object"},
                   "jobs": {"type": "array", "items": {"type": "object"}, "minItems": 1}},
    "required": ["jobs"], "additionalProperties": False,
}


class JobError(ValueError):
    """A job (file) is invalid; the message starts with the offending field."""


@dataclass(frozen=True)
class Constraints:
    kinds: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    instance_types: tuple[str, ...] = ()
    include_retired: bool = False

    def allows(self, itype) -> tuple[bool, str]:
        if self.instance_types and itype.name not in self.instance_types:
            return False, f"not among instance_types {list(self.instance_types)}"
        if self.kinds and itype.kind not in self.kinds:
            return False, f"kind {itype.kind} not in {list(self.kinds)}"
        if self.models and itype.accelerator not in self.models:
            return False, f"accelerator {itype.accelerator or 'none'} not in {list(self.models)}"
        if itype.retired and not self.include_retired:
            return False, f"retired {itype.retired}"
        return True, ""


@dataclass(frozen=True)
class Job:
    """One validated job. ``doc`` is the normalised job document the store persists."""

    name: str
    doc: dict[str, Any] = field(repr=False, compare=False)
    spec: OpSpec | None = None
    suite: dict[str, Any] | None = None
    priority: int = 0
    deadline_s: float | None = None
    policy: str = "min_cost"
    constraints: Constraints = Constraints()
    estimate_s: float | None = None
    base_dir: str = "."

    @property
    def kind(self) -> str:
        return "op" if self.spec is not None else "suite"

    @property
    def core(self) -> str | None:
        """The FPGA core image this job needs (jobs with the same core share a loaded node)."""
        if self.spec is None:
            return None
        return f"{self.spec.op}-{self.spec.dtype}"

    @classmethod
    def from_doc(cls, doc: dict, where: str = "job", base_dir: str | os.PathLike = ".") -> "Job":
        return parse_job(doc, where, base_dir)


# ---- validation -------------------------------------------------------------------------
def _field(prefix: str, path) -> str:
    out = prefix
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "job"


def _schema_error(validator, doc, prefix) -> None:
    errors = sorted(validator.iter_errors(doc), key=lambda e: (len(e.path), str(e.path)))
    if not errors:
        return
    err = max(errors, key=lambda e: len(e.absolute_path))  # the deepest is the most precise
    if err.validator in ("oneOf", "anyOf") and err.context:
        deeper = max(err.context, key=lambda e: len(e.absolute_path))
        if len(deeper.absolute_path) > len(err.absolute_path) or deeper.validator == "required":
            err = deeper
    path = list(err.absolute_path)
    msg = err.message
    if err.validator == "required":
        missing = [k for k in err.validator_value if k not in err.instance]
        if missing:
            path.append(missing[0])
            msg = "missing"
    elif err.validator == "additionalProperties":
        extra = [k for k in err.instance if k not in err.schema.get("properties", {})]
        if extra:
            path.append(extra[0])
            msg = "unknown field"
    elif err.validator == "oneOf" and path == [] and prefix is not None:
        has = [k for k in ("op", "suite") if k in err.instance]
        msg = ("a job has either 'op' (an operation) or 'suite', not both" if len(has) == 2
               else "missing: a job needs 'op' (matmul or conv2d) or 'suite'")
        path = ["op"]
    elif err.validator == "oneOf" and isinstance(err.instance, dict) and path and path[-1] in ("a", "b", "x", "w", "bias"):
        msg = "an operand is {shape, dtype} (random data), {data, dtype} (inline) or {path} (a .npy file)"
    raise JobError(f"{_field(prefix, path)}: {msg}")


_JOB_VALIDATOR = jsonschema.Draft202012Validator(JOB_SCHEMA)
_WORKLOAD_VALIDATOR = jsonschema.Draft202012Validator(WORKLOAD_SCHEMA)


def operand_path(src: dict, base_dir) -> Path:
    p = src["path"]
    if "://" in p:
        u = urlparse(p)
        if u.scheme != "file":
            raise JobError(f"path: only local files (file://) are supported, got {u.scheme}://")
        p = u.path
    path = Path(p)
    return path if path.is_absolute() else Path(base_dir) / path


def operand_meta(src: dict, base_dir, where: str) -> tuple[tuple[int, ...], str]:
    """(shape, dtype) of an operand without loading its data."""
    if "shape" in src:
        return tuple(src["shape"]), src["dtype"]
    if "data" in src:
        arr = np.asarray(src["data"])
        if arr.dtype == object:
            raise JobError(f"{where}.data: ragged nested lists; expected a rectangular array")
        return arr.shape, src["dtype"]
    path = operand_path(src, base_dir)
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise JobError(f"{where}.path: cannot read {path}: {exc}") from None
    from ..dtypes import dtype_name
    dt = dtype_name(arr.dtype)
    if "dtype" in src and src["dtype"] != dt:
        raise JobError(f"{where}.dtype: file holds {dt}, job says {src['dtype']}")
    return tuple(arr.shape), dt


def _spec(doc: dict, prefix: str, base_dir) -> OpSpec:
    names = ("a", "b") if doc["op"] == "matmul" else ("x", "w")
    for n in names:
        if n not in doc:
            raise JobError(f"{_field(prefix, [n])}: missing (a {doc['op']} needs {names[0]} and {names[1]})")
    for n in ("stride", "padding", "dilation", "groups", "layout"):
        if doc["op"] == "matmul" and n in doc:
            raise JobError(f"{_field(prefix, [n])}: only meaningful for conv2d")
    metas = {n: operand_meta(doc[n], base_dir, _field(prefix, [n])) for n in names + ("bias",) if n in doc}
    bias = metas.get("bias", (None, None))
    try:
        if doc["op"] == "matmul":
            (ash, adt), (bsh, bdt) = metas["a"], metas["b"]
            return matmul_spec(ash, adt, bsh, bdt, bias_shape=bias[0], bias_dtype=bias[1],
                               activation=doc.get("activation"), out_dtype=doc.get("out_dtype"))
        (xsh, xdt), (wsh, wdt) = metas["x"], metas["w"]
        kw = {k: (tuple(doc[k]) if isinstance(doc[k], list) else doc[k])
              for k in ("stride", "padding", "dilation", "groups", "layout") if k in doc}
        return conv2d_spec(xsh, xdt, wsh, wdt, bias_shape=bias[0], bias_dtype=bias[1],
                           activation=doc.get("activation"), out_dtype=doc.get("out_dtype"), **kw)
    except (ValueError, TypeError) as exc:
        # the spec validators start their messages with the argument's name
        msg = str(exc)
        head, _, rest = msg.partition(": ")
        if rest and head.isidentifier():
            raise JobError(f"{_field(prefix, [head])}: {rest}") from None
        raise JobError(f"{prefix or 'job'}: {msg}") from None


def parse_job(doc: Any, where: str = "", base_dir: str | os.PathLike = ".") -> Job:
    """Validate one job document (already merged with workload defaults)."""
    if not isinstance(doc, dict):
        raise JobError(f"{where or 'job'}: expected a mapping, got {type(doc).__name__}")
    _schema_error(_JOB_VALIDATOR, doc, where)
    doc = copy.deepcopy(doc)
    spec = suite = None
    if "op" in doc:
        spec = _spec(doc, where, base_dir)
        name = doc.get("name") or f"{spec.op}-{spec.dtype}-" + "x".join(str(d) for d in spec.gemm_shape[1:])
    else:
        suite = doc["suite"]
        if suite["name"] == "shell" and "command" not in suite:
            raise JobError(f"{_field(where, ['suite', 'command'])}: missing (the shell suite runs a command)")
        if suite["name"] != "shell" and "command" in suite:
            raise JobError(f"{_field(where, ['suite', 'command'])}: only the shell suite takes a command; "
                           "use args")
        if "estimate_s" not in doc:
            raise JobError(f"{_field(where, ['estimate_s'])}: missing (a suite needs an estimated "
                           "duration for placement)")
        name = doc.get("name") or f"suite-{suite['name']}"
    c = doc.get("constraints") or {}
    kinds = c.get("kind", ())
    cons = Constraints(kinds=(kinds,) if isinstance(kinds, str) else tuple(kinds),
                       models=tuple(c.get("models", ())), instance_types=tuple(c.get("instance_types", ())),
                       include_retired=bool(c.get("include_retired", False)))
    doc["name"] = name
    doc.setdefault("seed", 0)
    return Job(name=name, doc=doc, spec=spec, suite=suite, priority=int(doc.get("priority", 0)),
               deadline_s=doc.get("deadline_s"), policy=doc.get("policy", "min_cost"),
               constraints=cons, estimate_s=doc.get("estimate_s"), base_dir=str(base_dir))


def _merge(defaults: dict, job: dict) -> dict:
    out = copy.deepcopy(defaults)
    for k, v in job.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_workload(data: Any, base_dir: str | os.PathLike = ".") -> list[Job]:
    """A workload (``jobs:`` list with optional ``defaults:``) or a single job document."""
    if isinstance(data, dict) and "jobs" in data:
        _schema_error(_WORKLOAD_VALIDATOR, data, "")
        defaults = data.get("defaults") or {}
        return [parse_job(_merge(defaults, j), f"jobs[{i}]", base_dir) for i, j in enumerate(data["jobs"])]
    return [parse_job(data, "", base_dir)]


def load_jobs(path: str | os.PathLike) -> list[Job]:
    """Read a job file or a workload file (YAML or JSON)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise JobError(f"{p}: cannot read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise JobError(f"{p}: not valid YAML: {exc}") from None
    return parse_workload(data, base_dir=p.parent)


def shell_allowed(explicit: bool | None = None) -> bool:
    if explicit is not None:
        return explicit
    return os.environ.get(ENV_ALLOW_SHELL, "") in ("1", "true", "yes")
