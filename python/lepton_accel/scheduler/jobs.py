"""Jobs: what the scheduler is asked to run, and the job-file format.

A job is either an operation (``op:`` one of :data:`lepton_accel.ops.OPS`, with the op's
operands and parameters, validated into an :class:`~lepton_accel.ops.OpSpec`) or a named
suite (a test or benchmark selection to run on given hardware). Each has a priority
(higher runs first), an optional deadline in seconds from submission, a policy
(``min_cost`` or ``min_time``) and constraints on where it may run. A job is parsed once,
at submission (or when a scheduler loads it from its store); the :class:`Job` with its
spec is what the scheduler places and what its workers run.

The op fields of a job file come from the op definitions: the operand names
(``opdef.operands``), the parameters (``opdef.job_properties``, turned into keyword
arguments by ``opdef.params_from_job``). Every error names the field, e.g.
``jobs[2].a.shape[1]: ...``, and no error message is longer than :data:`MAX_MESSAGE`.

Operands are given one of three ways::

    a: {shape: [256, 512], dtype: float32}        # random data from the job's seed
    a: {data: [[1, 2], [3, 4]], dtype: int8}     # inline (small inputs)
    a: {path: inputs/a.npy}                       # a .npy file (path or file:// URI)

Bounds (a job file is input from anyone who may submit): the file at most
:data:`MAX_FILE_BYTES`; nesting at most :data:`MAX_DEPTH`; YAML aliases may not expand the
document past :data:`MAX_NODES` values; numbers finite and integers within int64; an array
(operand or output) at most :data:`MAX_RANK` dimensions and :data:`MAX_ELEMENTS` elements.

A suite never runs a shell: ``tests`` and ``benchmarks`` run pytest as an argument list
and take test selections only (paths inside the suite's project, ``-k``, ``-m`` and output
flags); the project must lie in a declared test root (:func:`test_roots`). ``shell`` runs
a command line, and suites take other pytest options, only when the caller enabled it
(``allow_shell=True``, ``--allow-shell`` or ``LEPTON_ACCEL_ALLOW_SHELL=1``).
"""
from __future__ import annotations

import copy
import functools
import json
import math
import os
import re
import stat
import unicodedata
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import fastjsonschema
import numpy as np
import yaml

from ..dtypes import DTYPES, OPERAND_DTYPES, is_integer
from ..ops import OPS, OpDef, OpSpec
from ..perf import DEVICES, KINDS

POLICIES = ("min_cost", "min_time")
SUITES = ("tests", "benchmarks", "shell")
OPTIMIZERS = ("adam", "sgd")
MAX_TRAIN_WORKERS = 64
ENV_ALLOW_SHELL = "LEPTON_ACCEL_ALLOW_SHELL"
ENV_TEST_ROOTS = "LEPTON_ACCEL_TEST_ROOTS"

MAX_FILE_BYTES = 16 * 2**20
MAX_DEPTH = 32
MAX_NODES = 2_000_000
MAX_RANK = 8
MAX_ELEMENTS = 2**32
MAX_MESSAGE = 400
MAX_STRING = 65536
_INT64 = (-2**63, 2**63 - 1)
_FLOW_GUARD = 10_000          # flow brackets deeper than this are refused before parsing

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
}
_STR_LIST = {"type": "array", "items": {"type": "string"}}
_PRIORITY = {"type": "integer", "minimum": _INT64[0], "maximum": _INT64[1]}
_POSITIVE = {"type": "number", "exclusiveMinimum": 0}

#: fields every job may have
_COMMON: dict[str, Any] = {
    "name": {"type": "string", "minLength": 1, "maxLength": 200},
    "priority": _PRIORITY,
    "deadline_s": _POSITIVE,
    "estimate_s": _POSITIVE,
    "policy": {"enum": list(POLICIES)},
    "constraints": {
        "type": "object",
        "properties": {
            "kind": {"oneOf": [{"enum": list(KINDS)}, {"type": "array", "items": {"enum": list(KINDS)}}]},
            "models": _STR_LIST,
            "instance_types": _STR_LIST,
            "include_retired": {"type": "boolean"},
            # true: spot capacity only; false: on demand only; absent: spot where the job checkpoints
            "spot": {"type": "boolean"},
        },
        "additionalProperties": False,
    },
}
#: fields of an operation job besides its operands and its op's parameters
_OP_FIELDS: dict[str, Any] = {
    "op": {"type": "string"},
    "bias": _OPERAND,
    "activation": {"enum": [None, "relu", "gelu"]},
    "out_dtype": _DTYPE,
    "seed": {"type": "integer", "minimum": 0, "maximum": _INT64[1]},
    "verify": {"type": "boolean"},
    "output": {"type": "string", "minLength": 1},
}
_SUITE = {
    "type": "object",
    "properties": {"name": {"enum": list(SUITES)}, "args": _STR_LIST, "project": {"type": "string", "minLength": 1},
                   "command": {"type": "string"}, "timeout_s": _POSITIVE,
                   # the worker writes pytest's JUnit XML to a file of its own choosing and
                   # returns it with the result (a path is never taken from a job file)
                   "junit": {"type": "boolean"}},
    "required": ["name"], "additionalProperties": False,
}

_ENTRY = {"type": "string", "pattern": r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", "maxLength": 300}
_TRAIN = {
    "type": "object",
    "properties": {
        "model": {"enum": ["seed_cnn"]},
        "entry": _ENTRY,
        "data": {"type": "string", "minLength": 1},
        "layers": {"enum": ["lepton", "torch"]},
        "epochs": {"type": "integer", "minimum": 1, "maximum": 100000},
        "batch_size": {"type": "integer", "minimum": 1, "maximum": 2**20},
        "optimizer": {"enum": list(OPTIMIZERS)},
        "lr": _POSITIVE,
        "seed": {"type": "integer", "minimum": 0, "maximum": 2**32 - 1},
        "workers": {"oneOf": [{"type": "integer", "minimum": 1, "maximum": MAX_TRAIN_WORKERS},
                              {"const": "auto"},
                              {"type": "object",     # elastic: any size in the range
                               "properties": {"min": {"type": "integer", "minimum": 1, "maximum": MAX_TRAIN_WORKERS},
                                              "max": {"type": "integer", "minimum": 1, "maximum": MAX_TRAIN_WORKERS}},
                               "required": ["min", "max"], "additionalProperties": False}]},
        "checkpoint_every": {
            "type": "object",
            "properties": {"steps": {"type": "integer", "minimum": 1}, "epochs": {"type": "integer", "minimum": 1}},
            "minProperties": 1, "maxProperties": 1, "additionalProperties": False,
        },
        "timeout_s": _POSITIVE,
    },
    "required": ["epochs", "batch_size"],
    "additionalProperties": False,
}


def op_schema(opdef: OpDef) -> dict[str, Any]:
    """JSON schema of one operation job of ``opdef`` (after workload defaults are merged)."""
    props = {**_COMMON, **_OP_FIELDS, **{n: _OPERAND for n in opdef.operands}, **opdef.job_properties}
    return {"type": "object", "properties": props, "required": ["op", *opdef.operands],
            "additionalProperties": False}


#: JSON schema of a suite job
SUITE_SCHEMA: dict[str, Any] = {"type": "object", "properties": {**_COMMON, "suite": _SUITE},
                                "required": ["suite", "estimate_s"], "additionalProperties": False}

#: JSON schema of a data-parallel training job
TRAIN_SCHEMA: dict[str, Any] = {"type": "object", "properties": {**_COMMON, "train": _TRAIN},
                                "required": ["train"], "additionalProperties": False}

#: JSON schema of a workload file: a list of jobs with optional shared defaults
WORKLOAD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "defaults": {"type": "object"},
                   "jobs": {"type": "array", "items": {"type": "object"}, "minItems": 1}},
    "required": ["jobs"], "additionalProperties": False,
}


def clip(msg: str, limit: int = MAX_MESSAGE) -> str:
    """A message cut to ``limit`` characters (saying how much was cut)."""
    msg = str(msg)
    return msg if len(msg) <= limit else f"{msg[:limit]}... ({len(msg) - limit} more characters)"


class JobError(ValueError):
    """A job (file) is invalid; the message starts with the offending field."""

    def __init__(self, msg: str):
        super().__init__(clip(msg))


@dataclass(frozen=True)
class Constraints:
    kinds: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    instance_types: tuple[str, ...] = ()
    include_retired: bool = False
    spot: bool | None = None        # True: spot only; False: on demand only; None: either

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


class SpecCosts:
    """A spec's cost terms computed once (the perf model reads them for every type)."""

    __slots__ = ("op", "dtype", "params", "shapes", "out_shape", "out_dtype", "flops", "bytes_in",
                 "bytes_out", "gemm_shape", "definition", "bias", "activation", "acc_dtype")

    def __init__(self, spec: OpSpec):
        for k in ("op", "dtype", "params", "shapes", "out_shape", "out_dtype", "bias", "activation",
                  "acc_dtype"):
            setattr(self, k, getattr(spec, k))
        self.definition = spec.definition
        self.flops, self.bytes_in, self.bytes_out = spec.flops, spec.bytes_in, spec.bytes_out
        self.gemm_shape = spec.gemm_shape


@dataclass(frozen=True)
class Job:
    """One validated job. ``doc`` is the normalised job document the store persists."""

    name: str
    doc: dict[str, Any] = field(repr=False, compare=False)
    spec: OpSpec | None = None
    suite: dict[str, Any] | None = None
    train: dict[str, Any] | None = None
    priority: int = 0
    deadline_s: float | None = None
    policy: str = "min_cost"
    constraints: Constraints = Constraints()
    estimate_s: float | None = None
    base_dir: str = "."

    @property
    def kind(self) -> str:
        return "op" if self.spec is not None else ("train" if self.train is not None else "suite")

    @cached_property
    def core(self) -> str | None:
        """The FPGA core image this job needs (jobs with the same core share a loaded node)."""
        if self.spec is None:
            return None
        return f"{self.spec.op}-{self.spec.dtype}"

    @cached_property
    def costs(self) -> SpecCosts | None:
        return None if self.spec is None else SpecCosts(self.spec)

    @cached_property
    def footprint(self) -> int:
        """Bytes of operands and output (what a node's memory must hold)."""
        return 0 if self.spec is None else self.spec.bytes_in + self.spec.bytes_out

    @classmethod
    def from_doc(cls, doc: dict, where: str = "job", base_dir: str | os.PathLike = ".", **kw) -> "Job":
        return parse_job(doc, where, base_dir, **kw)


# ---- field names and schema errors -----------------------------------------------------
def _field(prefix: str, path) -> str:
    out = prefix
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "job"


def _schema_error(validator, doc, prefix) -> None:
    errors = list(validator.iter_errors(doc))
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
    raise JobError(f"{_field(prefix, path)}: {clip(msg, 200)}")


class _Schema:
    """A schema checked fast (fastjsonschema, compiled); on a failure, jsonschema finds
    the most precise error to report."""

    def __init__(self, schema: dict):
        self.schema = schema
        self._fast = None  # compiled on first use: the CLI's start-up does not pay for it

    def check(self, doc, prefix: str) -> None:
        if self._fast is None:
            self._fast = fastjsonschema.compile(self.schema)
        try:
            self._fast(doc)
        except fastjsonschema.JsonSchemaException as exc:
            import jsonschema  # only to word the error: it finds the most precise one

            _schema_error(jsonschema.Draft202012Validator(self.schema), doc, prefix)
            raise JobError(f"{prefix or 'job'}: {clip(exc.message, 200)}") from None


@functools.lru_cache(maxsize=None)
def _op_validator(name: str) -> _Schema:
    return _Schema(op_schema(OPS[name]))


_SUITE_VALIDATOR = _Schema(SUITE_SCHEMA)
_WORKLOAD_VALIDATOR = _Schema(WORKLOAD_SCHEMA)
_TRAIN_VALIDATOR = _Schema(TRAIN_SCHEMA)


@functools.lru_cache(maxsize=8)
def _op_fields_for(_n_ops: int) -> dict[str, str]:
    owner: dict[str, set[str]] = {}
    for name, d in OPS.items():
        for f in (*d.operands, *d.job_properties):
            owner.setdefault(f, set()).add(name)
    return {f: " or ".join(sorted(ops)) for f, ops in owner.items() if len(ops) < len(OPS)}


def _op_fields() -> dict[str, str]:
    """field -> the op it belongs to, for fields of only some ops."""
    return _op_fields_for(len(OPS))


# ---- values: depth, types, finite numbers, int64 ------------------------------------------
def check_values(doc: Any, prefix: str = "") -> None:
    """Every value JSON-like, numbers finite, integers within int64, strings and nesting
    bounded (so nothing downstream recurses or overflows on them)."""
    stack = [(doc, (), 0)]
    seen = 0
    while stack:
        obj, path, depth = stack.pop()
        seen += 1
        if seen > MAX_NODES:
            raise JobError(f"{prefix or 'job'}: more than {MAX_NODES:,} values")
        if depth > MAX_DEPTH:
            raise JobError(f"{_field(prefix, path)}: nested deeper than {MAX_DEPTH} levels")
        t = type(obj)
        if t is dict:
            for k, v in obj.items():
                if type(k) is not str:
                    raise JobError(f"{_field(prefix, path)}: keys must be strings, got {clip(repr(k), 60)}")
                stack.append((v, path + (k,), depth + 1))
        elif t is list:
            for i, v in enumerate(obj):
                stack.append((v, path + (i,), depth + 1))
        elif t is float:
            if not math.isfinite(obj):
                raise JobError(f"{_field(prefix, path)}: {obj} is not a finite number")
        elif t is int:
            if not _INT64[0] <= obj <= _INT64[1]:
                raise JobError(f"{_field(prefix, path)}: {clip(str(obj), 40)} is outside the int64 range")
        elif t is str:
            if len(obj) > MAX_STRING:
                raise JobError(f"{_field(prefix, path)}: string longer than {MAX_STRING} characters")
        elif t is not bool and obj is not None:
            raise JobError(f"{_field(prefix, path)}: unsupported value of type {t.__name__}")


def _check_name(name, where: str) -> None:
    bad = [c for c in name if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")]
    if bad:
        raise JobError(f"{where}: control characters are not allowed in names (found {bad[0]!r})")


# ---- operands ----------------------------------------------------------------------------
def operand_path(src: dict, base_dir) -> Path:
    p = src["path"]
    if "://" in p:
        u = urlparse(p)
        if u.scheme != "file":
            raise JobError(f"path: only local files (file://) are supported, got {u.scheme}://")
        p = u.path
    path = Path(p)
    return path if path.is_absolute() else Path(base_dir) / path


def _check_shape(shape, where: str) -> None:
    if len(shape) > MAX_RANK:
        raise JobError(f"{where}: rank {len(shape)}; at most {MAX_RANK} dimensions")
    n = math.prod(shape)
    if n > MAX_ELEMENTS:
        raise JobError(f"{where}: {n:,} elements; at most {MAX_ELEMENTS:,} (2**32) per array")


def inline_array(src: dict, where: str) -> np.ndarray:
    """The inline ``data`` of an operand as an array of its dtype, checked: rectangular,
    numeric, and every value representable in the dtype."""
    dt = src["dtype"]
    try:
        arr = np.asarray(src["data"])
    except (ValueError, OverflowError):
        raise JobError(f"{where}.data: ragged nested lists; expected a rectangular array") from None
    if arr.dtype == object:
        raise JobError(f"{where}.data: ragged nested lists; expected a rectangular array")
    if arr.dtype.kind not in "iuf":
        raise JobError(f"{where}.data: expected numbers, got {arr.dtype.kind!r}-kind values")
    _check_shape(arr.shape, f"{where}.data")
    if is_integer(dt):
        if arr.dtype.kind == "f":
            raise JobError(f"{where}.data: {dt} data must be integers")
        info = np.iinfo(DTYPES[dt])
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            raise JobError(f"{where}.data: values must lie in [{info.min}, {info.max}] for {dt}; "
                           f"got {arr.min()}..{arr.max()}")
        return arr.astype(DTYPES[dt])
    with np.errstate(over="ignore", invalid="ignore"):
        out = arr.astype(DTYPES[dt])
        finite = np.isfinite(out.astype(np.float32)).all()
    if not finite:
        raise JobError(f"{where}.data: values overflow {dt}")
    return out


def operand_meta(src: dict, base_dir, where: str) -> tuple[tuple[int, ...], str]:
    """(shape, dtype) of an operand without loading its data."""
    if "shape" in src:
        shape = tuple(src["shape"])
        _check_shape(shape, f"{where}.shape")
        return shape, src["dtype"]
    if "data" in src:
        return inline_array(src, where).shape, src["dtype"]
    path = operand_path(src, base_dir)
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise JobError(f"{where}.path: {clip(str(path), 200)} is not a regular file")
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise JobError(f"{where}.path: cannot read {clip(str(path), 200)}: {clip(exc, 200)}") from None
    if not isinstance(arr, np.ndarray):
        close = getattr(arr, "close", None)
        if close:
            close()
        raise JobError(f"{where}.path: {clip(str(path), 200)} is not a .npy array file "
                       f"(found {type(arr).__name__}); one operand per .npy file")
    from ..dtypes import dtype_name
    dt = dtype_name(arr.dtype)
    if "dtype" in src and src["dtype"] != dt:
        raise JobError(f"{where}.dtype: file holds {dt}, job says {src['dtype']}")
    _check_shape(arr.shape, f"{where}.path")
    return tuple(arr.shape), dt


def _operand_form(doc: dict, names, prefix: str) -> None:
    for n in names:
        src = doc.get(n)
        if src is None:
            continue
        forms = [k for k in ("shape", "data", "path") if k in src]
        if len(forms) != 1:
            raise JobError(f"{_field(prefix, [n])}: an operand is {{shape, dtype}} (random data), "
                           "{data, dtype} (inline) or {path} (a .npy file)")
        if forms[0] != "path" and "dtype" not in src:
            raise JobError(f"{_field(prefix, [n, 'dtype'])}: missing")


def _spec(opdef: OpDef, doc: dict, prefix: str, base_dir) -> OpSpec:
    names = opdef.operands
    _operand_form(doc, names + ("bias",), prefix)
    metas = {n: operand_meta(doc[n], base_dir, _field(prefix, [n])) for n in names + ("bias",) if n in doc}
    bias = metas.get("bias", (None, None))
    try:
        spec = opdef.spec(tuple(metas[n][0] for n in names), tuple(metas[n][1] for n in names),
                          bias_shape=bias[0], bias_dtype=bias[1], activation=doc.get("activation"),
                          out_dtype=doc.get("out_dtype"), **opdef.params_from_job(doc))
    except (ValueError, TypeError, OverflowError) as exc:
        # the op validators start their messages with the argument's name
        msg = str(exc)
        head, _, rest = msg.partition(": ")
        if rest and head.isidentifier():
            raise JobError(f"{_field(prefix, [head])}: {rest}") from None
        raise JobError(f"{prefix or 'job'}: {msg}") from None
    _check_shape(spec.out_shape, f"{prefix or 'job'} (output)")
    return spec


def _output(doc: dict, prefix: str, base_dir) -> None:
    out = doc.get("output")
    if out is None:
        return
    where = _field(prefix, ["output"])
    if os.path.isabs(out) or "://" in out:
        raise JobError(f"{where}: must be a path relative to the job's directory")
    base = os.path.realpath(base_dir)
    target = os.path.realpath(os.path.join(base, out))
    if os.path.commonpath([base, target]) != base or target == base:
        raise JobError(f"{where}: {clip(out, 100)} is outside the job's directory")


# ---- suites -------------------------------------------------------------------------------
#: pytest options a tests/benchmarks suite may use without trusted suites: they select
#: tests or shape the report, and load or write nothing
_FLAGS = {"-q", "-qq", "--quiet", "-v", "-vv", "--verbose", "-x", "--exitfirst", "-s", "-l",
          "--showlocals", "--strict-markers", "--no-header", "--runxfail", "--benchmark-disable-gc",
          "--benchmark-warmup"}
_VALUED = re.compile(r"^(--tb=(auto|long|short|line|native|no)|--maxfail=\d+|--durations=\d+|-r[a-zA-Z]+|"
                     r"--color=(yes|no|auto)|--benchmark-(min-rounds|max-time|min-time|sort|columns|"
                     r"group-by)=[\w.,-]+)$")
_SELECT = ("-k", "-m")


def _builtin_root() -> list[str]:
    """The source tree this package runs from, when it is a checkout with its tests."""
    root = Path(__file__).resolve().parents[3]
    if (root / "pyproject.toml").is_file() and (root / "tests").is_dir():
        return [str(root)]
    return []


def test_roots(extra=()) -> list[str]:
    """Directories whose tests a suite may run: the package's own checkout, those in
    ``$LEPTON_ACCEL_TEST_ROOTS`` (os.pathsep-separated) and ``extra``."""
    env = [p for p in os.environ.get(ENV_TEST_ROOTS, "").split(os.pathsep) if p]
    return [os.path.realpath(p) for p in (*_builtin_root(), *env, *extra)]


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([root, path]) == root


def suite_project(suite: dict, base_dir) -> str:
    p = suite.get("project", ".")
    return os.path.realpath(p if os.path.isabs(p) else os.path.join(base_dir, p))


def check_suite(suite: dict, base_dir, where: str, *, trusted: bool, roots) -> None:
    """Refuse a tests/benchmarks suite that would load code or write outside its project.

    ``trusted`` (shell/trusted suites enabled) lifts the restrictions."""
    if suite["name"] == "shell" or trusted:
        return
    project = suite_project(suite, base_dir)
    roots = list(roots)
    if not any(_inside(project, r) for r in roots):
        raise JobError(f"{_field(where, ['suite', 'project'])}: {clip(project, 200)} is not inside a declared "
                       f"test root ({', '.join(roots) or 'none declared'}); declare it with --tests-root or "
                       f"${ENV_TEST_ROOTS}, or enable trusted suites (--allow-shell)")
    args = suite.get("args", [])
    i = 0
    while i < len(args):
        a, here = args[i], _field(where, ["suite", "args", i])
        if a in _SELECT:
            if i + 1 >= len(args):
                raise JobError(f"{here}: {a} needs an expression")
            i += 2
            continue
        if a in _FLAGS or _VALUED.match(a):
            i += 1
            continue
        if a == "-p" and i + 1 < len(args) and args[i + 1].startswith("no:"):
            i += 2      # disabling a plugin loads nothing
            continue
        if a.startswith(("-", "@")) or not a:
            raise JobError(f"{here}: {clip(a, 60)!s} is not allowed; tests suites take test selections "
                           "only (paths inside the project, -k EXPR, -m EXPR, output flags such as -q, -v, "
                           "-x, --tb=short); other options load code or write files and need trusted "
                           "suites (--allow-shell)")
        target = os.path.realpath(os.path.join(project, a.split("::", 1)[0]))
        if not _inside(target, project):
            raise JobError(f"{here}: {clip(a, 100)} is outside the suite's project {clip(project, 100)}")
        i += 1


# ---- training -----------------------------------------------------------------------------
def _train(train: dict, where: str) -> dict:
    """A train section with its defaults filled in (the schema has checked the types)."""
    if ("model" in train) == ("entry" in train):
        raise JobError(f"{where}.model: give either model (seed_cnn) or entry (module:function), "
                       "not both" if "model" in train else f"{where}.model: missing (seed_cnn, or "
                       "entry: module:function)")
    if "entry" in train and ("data" in train or "layers" in train):
        f = "data" if "data" in train else "layers"
        raise JobError(f"{where}.{f}: only meaningful with model: seed_cnn (an entry point builds its "
                       "own data and model)")
    out = {"optimizer": "adam", "lr": 3e-3, "seed": 0, "workers": 1, "checkpoint_every": {"epochs": 1},
           **train}
    if "model" in out:
        out.setdefault("data", "digits")
        out.setdefault("layers", "lepton")
    w = out["workers"]
    if isinstance(w, dict) and w["min"] > w["max"]:
        raise JobError(f"{where}.workers.min: {w['min']} is larger than max ({w['max']})")
    most = w["max"] if isinstance(w, dict) else w
    if isinstance(most, int) and out["batch_size"] < most:
        raise JobError(f"{where}.batch_size: {out['batch_size']} is smaller than workers "
                       f"({most}); the global batch is split across the workers")
    return out


# ---- jobs ---------------------------------------------------------------------------------
def _parse(doc: dict, where: str, base_dir, catalog, trusted: bool, roots, validate: bool) -> Job:
    check_values(doc, where)
    kinds = [k for k in ("op", "suite", "train") if k in doc]
    if len(kinds) > 1:
        raise JobError(f"{_field(where, [kinds[1]])}: a job has one of 'op' (an operation), 'suite' or "
                       f"'train', not {' and '.join(repr(k) for k in kinds)}")
    if "name" in doc and isinstance(doc["name"], str):
        _check_name(doc["name"], _field(where, ["name"]))
    spec = suite = train = None
    if "train" in doc:
        for f in _op_fields():
            if f in doc:
                raise JobError(f"{_field(where, [f])}: only meaningful for an operation job (op: ...)")
        if validate:
            _TRAIN_VALIDATOR.check(doc, where)
        doc = json.loads(json.dumps(doc))
        train = _train(doc["train"], _field(where, ["train"]))
        if "entry" in train and "estimate_s" not in doc:
            raise JobError(f"{_field(where, ['estimate_s'])}: missing (placement needs a duration for an "
                           "entry-point model, whose layers it cannot see)")
        name = doc.get("name") or f"train-{train.get('model') or train['entry']}"
    elif "op" in doc:
        opdef = OPS.get(doc["op"]) if isinstance(doc["op"], str) else None
        if opdef is None:
            raise JobError(f"{_field(where, ['op'])}: unknown op {clip(repr(doc['op']), 60)}; expected one "
                           f"of {', '.join(OPS)}")
        for f, owner in _op_fields().items():
            if f in doc and f not in opdef.operands and f not in opdef.job_properties:
                raise JobError(f"{_field(where, [f])}: only meaningful for {owner}")
        if validate:
            _op_validator(opdef.name).check(doc, where)
        doc = json.loads(json.dumps(doc))
        spec = _spec(opdef, doc, where, base_dir)
        _output(doc, where, base_dir)
        name = doc.get("name") or f"{spec.op}-{spec.dtype}-" + "x".join(str(d) for d in spec.gemm_shape[1:])
    elif "suite" in doc:
        for f in _op_fields():
            if f in doc:
                raise JobError(f"{_field(where, [f])}: only meaningful for an operation job (op: ...)")
        if validate:
            _SUITE_VALIDATOR.check(doc, where)
        doc = json.loads(json.dumps(doc))
        suite = doc["suite"]
        if suite["name"] == "shell" and "command" not in suite:
            raise JobError(f"{_field(where, ['suite', 'command'])}: missing (the shell suite runs a command)")
        if suite["name"] != "shell" and "command" in suite:
            raise JobError(f"{_field(where, ['suite', 'command'])}: only the shell suite takes a command; "
                           "use args")
        check_suite(suite, base_dir, where, trusted=trusted, roots=test_roots() if roots is None else roots)
        name = doc.get("name") or f"suite-{suite['name']}"
    else:
        raise JobError(f"{_field(where, ['op'])}: missing: a job needs 'op' ({' or '.join(OPS)}), 'suite' or "
                       "'train'")
    c = doc.get("constraints") or {}
    kinds = c.get("kind", ())
    cons = Constraints(kinds=(kinds,) if isinstance(kinds, str) else tuple(kinds),
                       models=tuple(c.get("models", ())), instance_types=tuple(c.get("instance_types", ())),
                       include_retired=bool(c.get("include_retired", False)), spot=c.get("spot"))
    for i, m in enumerate(cons.models):
        if m not in DEVICES or m == "host-cpu":
            raise JobError(f"{_field(where, ['constraints', 'models', i])}: unknown accelerator "
                           f"{clip(repr(m), 60)}; known: {', '.join(d for d in DEVICES if d != 'host-cpu')}")
    if catalog is not None:
        for i, t in enumerate(cons.instance_types):
            if t not in catalog.types:
                raise JobError(f"{_field(where, ['constraints', 'instance_types', i])}: unknown instance type "
                               f"{clip(repr(t), 60)}; known: {', '.join(catalog.types)}")
    doc["name"] = name
    if spec is not None:
        doc.setdefault("seed", 0)
    return Job(name=name, doc=doc, spec=spec, suite=suite, train=train, priority=int(doc.get("priority", 0)),
               deadline_s=doc.get("deadline_s"), policy=doc.get("policy", "min_cost"),
               constraints=cons, estimate_s=doc.get("estimate_s"), base_dir=str(base_dir))


def parse_job(doc: Any, where: str = "", base_dir: str | os.PathLike = ".", *, catalog=None,
              trusted: bool | None = None, roots=None, stored: bool = False) -> Job:
    """Validate one job document (already merged with workload defaults).

    ``catalog``: check ``instance_types`` against it. ``trusted``: shell/trusted suites
    enabled (default: :func:`shell_allowed`). ``roots``: the declared test roots (default
    :func:`test_roots`). ``stored``: the document comes from a store, where it was
    validated at submission; the schema pass is skipped (every other check runs).
    """
    if not isinstance(doc, dict):
        raise JobError(f"{where or 'job'}: expected a mapping, got {type(doc).__name__}")
    trusted = shell_allowed() if trusted is None else trusted
    if stored:
        try:
            return _parse(doc, where, base_dir, catalog, trusted, roots, validate=False)
        except JobError:
            raise
        except Exception:  # a document this version would not have stored: say which field
            pass
    return _parse(doc, where, base_dir, catalog, trusted, roots, validate=True)


def _merge(defaults: dict, job: dict) -> dict:
    out = copy.deepcopy(defaults)
    for k, v in job.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_workload(data: Any, base_dir: str | os.PathLike = ".", **kw) -> list[Job]:
    """A workload (``jobs:`` list with optional ``defaults:``) or a single job document."""
    if isinstance(data, dict) and "jobs" in data:
        check_values(data)
        _WORKLOAD_VALIDATOR.check(data, "")
        if isinstance(data.get("name"), str):
            _check_name(data["name"], "name")
        defaults = data.get("defaults") or {}
        return [parse_job(_merge(defaults, j), f"jobs[{i}]", base_dir, **kw) for i, j in enumerate(data["jobs"])]
    return [parse_job(data, "", base_dir, **kw)]


# ---- YAML, bounded ---------------------------------------------------------------------------
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _check_graph(root, where: str) -> None:
    """Depth and alias-expanded size of a composed YAML node graph (shared nodes counted
    once per reference, without expanding them)."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    stack = [(root, False)]
    on_path: set[int] = set()
    while stack:
        node, done = stack.pop()
        nid = id(node)
        if done:
            on_path.discard(nid)
            kids = _children(node)
            size[nid] = 1 + sum(size[id(k)] for k in kids)
            depth[nid] = 1 + max((depth[id(k)] for k in kids), default=0)
            if depth[nid] > MAX_DEPTH + 1:
                raise JobError(f"{where}: nested deeper than {MAX_DEPTH} levels")
            if size[nid] > MAX_NODES:
                raise JobError(f"{where}: YAML aliases expand to more than {MAX_NODES:,} values")
            continue
        if nid in size:
            continue
        if nid in on_path:
            raise JobError(f"{where}: recursive YAML alias")
        on_path.add(nid)
        stack.append((node, True))
        for k in _children(node):
            if id(k) not in size:
                stack.append((k, False))


def _children(node) -> list:
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [x for kv in node.value for x in kv]
    return []


def load_yaml(text: str, where: str) -> Any:
    """Parse a job file with the C loader where available, bounded in size, depth and
    alias expansion."""
    if len(text) > MAX_FILE_BYTES:
        raise JobError(f"{where}: larger than {MAX_FILE_BYTES // 2**20} MiB")
    codes = np.frombuffer(text.encode("utf-8", "surrogatepass"), np.uint8)
    if codes.size:
        step = (np.isin(codes, (91, 123)).astype(np.int32) - np.isin(codes, (93, 125)).astype(np.int32))
        if np.cumsum(step).max(initial=0) > _FLOW_GUARD:
            raise JobError(f"{where}: nested deeper than {MAX_DEPTH} levels")
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_graph(node, where)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise JobError(f"{where}: not valid YAML: {clip(exc, 300)}") from None
    except RecursionError:
        raise JobError(f"{where}: nested deeper than {MAX_DEPTH} levels") from None
    finally:
        loader.dispose()


def load_jobs(path: str | os.PathLike, **kw) -> list[Job]:
    """Read a job file or a workload file (YAML or JSON)."""
    p = Path(path)
    try:
        if p.stat().st_size > MAX_FILE_BYTES:
            raise JobError(f"{p}: larger than {MAX_FILE_BYTES // 2**20} MiB")
        text = p.read_text()
    except OSError as exc:
        raise JobError(f"{p}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise JobError(f"{p}: not a text file (UTF-8)") from None
    return parse_workload(load_yaml(text, str(p)), base_dir=p.parent, **kw)


def shell_allowed(explicit: bool | None = None) -> bool:
    if explicit is not None:
        return explicit
    return os.environ.get(ENV_ALLOW_SHELL, "") in ("1", "true", "yes")
