"""Resource samples of the host and of each node (worker): CPU, memory, disk, network, GPUs.

The scheduler samples its nodes itself, by process id, rather than having workers report:
a local worker is busy inside its job for the whole run and speaks only when a result is
ready, so samples sent with results would leave long jobs unseen; the loop already passes
every few milliseconds, reading ``/proc`` for a pid needs no change to the worker
protocol, and a worker that hangs is seen to stop reporting instead of being silent.

* per node: CPU (percent of one core, the worker's whole process tree, so a job's
  subprocesses count), resident memory, and disk bytes read/written per second (psutil);
* per host: CPU and memory utilisation, network and disk throughput (psutil);
* per GPU: utilisation, memory used/total and temperature through NVML (``nvidia-ml-py``),
  when the library loads; without it (no driver, no GPU) GPUs are simply not sampled.

Throughputs are differences of psutil's cumulative counters between two samples, so the
first sample has none. Everything here is advice: a sample that cannot be taken is left
out, never raised.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

try:
    import psutil
except ImportError:          # the monitoring extra is not installed: nothing is sampled
    psutil = None


@dataclass
class NodeSample:
    node_id: str
    itype: str
    cpu_percent: float           # of one core, summed over the worker's process tree
    memory_bytes: int            # resident set of the tree
    disk_read_bps: float | None = None
    disk_write_bps: float | None = None


@dataclass
class GpuSample:
    index: int
    name: str
    utilization_percent: float
    memory_used_bytes: int
    memory_total_bytes: int
    temperature_c: float


@dataclass
class HostSample:
    at: float
    cpu_percent: float | None = None
    memory_percent: float | None = None
    net_rx_bps: float | None = None
    net_tx_bps: float | None = None
    disk_read_bps: float | None = None
    disk_write_bps: float | None = None
    gpus: list = field(default_factory=list)
    nodes: list = field(default_factory=list)


def _load_nvml(module=None):
    """The NVML module, initialised; None when it is not installed or does not load."""
    if module is None:
        try:
            import pynvml as module       # nvidia-ml-py
        except ImportError:
            return None
    try:
        module.nvmlInit()
    except Exception:                      # NVMLError: no driver / no GPU
        return None
    return module


def gpu_samples(nvml) -> list[GpuSample]:
    """One sample per GPU NVML sees (an empty list when a query fails)."""
    out = []
    try:
        for i in range(nvml.nvmlDeviceGetCount()):
            h = nvml.nvmlDeviceGetHandleByIndex(i)
            name = nvml.nvmlDeviceGetName(h)
            name = name.decode() if isinstance(name, bytes) else str(name)
            util = nvml.nvmlDeviceGetUtilizationRates(h)
            mem = nvml.nvmlDeviceGetMemoryInfo(h)
            temp = nvml.nvmlDeviceGetTemperature(h, getattr(nvml, "NVML_TEMPERATURE_GPU", 0))
            out.append(GpuSample(i, name, float(util.gpu), int(mem.used), int(mem.total), float(temp)))
    except Exception:
        return []
    return out


class Sampler:
    """Takes :class:`HostSample` s; keeps the counters and process handles between them.

    ``nvml``: an NVML module to use instead of importing ``pynvml`` (tests pass a fake);
    ``gpus=False`` skips NVML altogether."""

    def __init__(self, *, nvml=None, gpus: bool = True):
        self._procs: dict[int, object] = {}        # pid -> psutil.Process (cpu_percent needs the same)
        self._io: dict[str, tuple[float, int, int]] = {}
        self._last: tuple | None = None            # (t, net rx, net tx, disk read, disk write)
        self._seen: set[int] = set()
        self.nvml = _load_nvml(nvml) if gpus else None
        if psutil is not None:
            psutil.cpu_percent(None)               # the first call only starts the interval

    @property
    def available(self) -> bool:
        return psutil is not None

    def _proc(self, pid: int):
        p = self._procs.get(pid)
        if p is None:
            p = self._procs[pid] = psutil.Process(pid)
            p.cpu_percent(None)
        return p

    def node(self, node_id: str, itype: str, pid: int, now: float) -> NodeSample | None:
        """The worker ``pid`` and its children; None when it cannot be read (gone)."""
        try:
            root = psutil.Process(pid)
            tree = [root, *root.children(recursive=True)]
        except (psutil.Error, OSError):
            self._procs.pop(pid, None)
            return None
        cpu = 0.0
        mem = rd = wr = 0
        try:
            if root.status() in (psutil.STATUS_STOPPED, psutil.STATUS_ZOMBIE, getattr(psutil, "STATUS_DEAD", "dead")):
                return None          # it makes no progress: it has stopped reporting
        except (psutil.Error, OSError):
            return None
        for p in tree:
            self._seen.add(p.pid)
            try:
                q = self._proc(p.pid)
                cpu += q.cpu_percent(None)
                mem += q.memory_info().rss
                try:
                    io = q.io_counters()
                    rd, wr = rd + io.read_bytes, wr + io.write_bytes
                except (AttributeError, psutil.AccessDenied):
                    pass
            except (psutil.Error, OSError):
                continue
        s = NodeSample(node_id, itype, cpu, mem)
        prev = self._io.get(node_id)
        if prev is not None and now > prev[0]:
            dt = now - prev[0]
            s.disk_read_bps, s.disk_write_bps = max(rd - prev[1], 0) / dt, max(wr - prev[2], 0) / dt
        self._io[node_id] = (now, rd, wr)
        return s

    def sample(self, nodes: dict[str, tuple[str, int]] | None = None, now: float | None = None) -> HostSample:
        """The host, its GPUs and ``nodes`` (node id -> (instance type, worker pid))."""
        now = time.monotonic() if now is None else now
        out = HostSample(now)
        if psutil is not None:
            out.cpu_percent = psutil.cpu_percent(None)
            out.memory_percent = psutil.virtual_memory().percent
            net, disk = psutil.net_io_counters(), psutil.disk_io_counters()
            cur = (now, net.bytes_recv if net else 0, net.bytes_sent if net else 0,
                   disk.read_bytes if disk else 0, disk.write_bytes if disk else 0)
            if self._last is not None and now > self._last[0]:
                dt = now - self._last[0]
                out.net_rx_bps, out.net_tx_bps, out.disk_read_bps, out.disk_write_bps = (
                    max(c - p, 0) / dt for c, p in zip(cur[1:], self._last[1:]))
            self._last = cur
            self._seen: set[int] = set()
            for nid, (itype, pid) in (nodes or {}).items():
                s = self.node(nid, itype, pid, now)
                if s is not None:
                    out.nodes.append(s)
            for nid in set(self._io) - set(nodes or {}):
                self._io.pop(nid, None)
            for pid in set(self._procs) - self._seen:     # processes that ended
                self._procs.pop(pid, None)
        if self.nvml is not None:
            out.gpus = gpu_samples(self.nvml)
        return out
