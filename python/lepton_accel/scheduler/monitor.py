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


# ---- the live status view (``lepton-accel status --watch``) -------------------------------------
def parse_metrics(text: str) -> dict:
    """Prometheus text -> {(sample name, ((label, value), ...)): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def fetch_metrics(url: str, timeout: float = 2.0) -> dict | None:
    """The scheduler's metrics from its endpoint; None when it does not answer."""
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return parse_metrics(r.read().decode())
    except (OSError, ValueError):
        return None


def _series(metrics: dict, name: str) -> list[tuple[dict, float]]:
    return [(dict(labels), v) for (n, labels), v in metrics.items() if n == name]


def _rate(bps: float | None) -> str:
    if bps is None:
        return "-"
    for unit, k in (("GB/s", 1e9), ("MB/s", 1e6), ("kB/s", 1e3)):
        if bps >= k:
            return f"{bps / k:.3g} {unit}"
    return f"{bps:.0f} B/s"


def status_view(store, metrics: dict | None = None, sample: HostSample | None = None, *, limit: int = 15,
                wall: float | None = None, safe=str):
    """A rich renderable (text from jobs and nodes is shown as text, never as markup): job counts, the unfinished and latest jobs, the nodes with their
    utilisation, the host and its GPUs. ``metrics``: the scheduler's (parsed) metrics,
    which name every node; without them, ``sample`` (taken here) covers the nodes that run
    jobs on this machine. ``safe``: makes job names fit for a terminal."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    wall = time.time() if wall is None else wall
    counts = store.counts()
    parts = [Text("jobs: " + ("  ".join(f"{k}={v}" for k, v in counts.items() if v) or "none"), style="bold")]
    recs = store.jobs()
    unfinished = [r for r in recs if r.finished_at is None and r.state != "cancelled"]
    done = sorted((r for r in recs if r not in unfinished), key=lambda r: -(r.finished_at or r.updated_at))
    shown = (unfinished + done)[:limit]
    jt = Table(title="jobs", title_justify="left", expand=False)
    for c in ("id", "state", "instance type", "node", "try", "s", "name"):
        jt.add_column(c, justify="right" if c in ("try", "s") else "left")
    style = {"done": "green", "failed": "red", "running": "cyan", "retried": "yellow", "cancelled": "dim"}
    for r in shown:
        since = r.started_at if r.state == "running" and r.started_at else r.submitted_at
        secs = r.measured_s if r.finished_at and r.measured_s is not None else wall - since
        late = r.deadline_s is not None and r.finished_at is None and wall - r.submitted_at > r.deadline_s
        jt.add_row(r.id, Text(r.state + (" (late)" if late else ""), style="bold red" if late else style.get(r.state, "")),
                   Text(r.itype or "-"), Text(r.node or "-"), str(r.attempts), f"{secs:.3g}", Text(safe(r.name)))
    if len(unfinished) + len(done) > len(shown):
        jt.caption = f"{len(unfinished) + len(done) - len(shown)} more not shown"
    parts.append(jt)

    nt = Table(title="nodes", title_justify="left")
    for c in ("node", "instance type", "jobs", "cpu %", "memory MiB", "disk read", "disk write", "seen s ago"):
        nt.add_column(c, justify="left" if c in ("node", "instance type") else "right")
    running: dict[str, int] = {}
    for r in unfinished:
        if r.state == "running" and r.node:
            running[r.node] = running.get(r.node, 0) + 1
    host = {}
    gpus: list[tuple[str, str, float, float, float, float]] = []
    if metrics is not None:
        nodes: dict[str, dict] = {}
        for name, key in (("lepton_node_cpu_percent", "cpu"), ("lepton_node_memory_bytes", "mem"),
                          ("lepton_node_last_seen_timestamp_seconds", "seen")):
            for lab, v in _series(metrics, name):
                nodes.setdefault(lab["node"], {"itype": lab["instance_type"]})[key] = v
        for lab, v in _series(metrics, "lepton_node_disk_bytes_per_second"):
            nodes.setdefault(lab["node"], {"itype": lab["instance_type"]})[lab["direction"]] = v
        for nid in sorted(nodes):
            n = nodes[nid]
            ago = wall - n["seen"] if "seen" in n else None
            nt.add_row(Text(nid), Text(n["itype"]), str(running.get(nid, 0)), _num(n.get("cpu")),
                       _num(n.get("mem"), 2 ** 20), _rate(n.get("read")), _rate(n.get("write")),
                       Text(_num(ago), style="bold red" if ago is not None and ago > 120 else ""))
        one = lambda n: next((v for _, v in _series(metrics, n)), None)   # noqa: E731
        by_dir = lambda n: {lab.get("direction"): v for lab, v in _series(metrics, n)}   # noqa: E731
        net, disk = by_dir("lepton_host_network_bytes_per_second"), by_dir("lepton_host_disk_bytes_per_second")
        host = dict(cpu=one("lepton_host_cpu_percent"), mem=one("lepton_host_memory_percent"), rx=net.get("rx"),
                    tx=net.get("tx"), read=disk.get("read"), write=disk.get("write"))
        g: dict[tuple, dict] = {}
        for name in ("lepton_gpu_utilization_percent", "lepton_gpu_memory_used_bytes",
                     "lepton_gpu_memory_total_bytes", "lepton_gpu_temperature_celsius"):
            for lab, v in _series(metrics, name):
                g.setdefault((lab["gpu"], lab["name"]), {})[name] = v
        for (i, name), d in sorted(g.items()):
            gpus.append((i, name, d.get("lepton_gpu_utilization_percent"), d.get("lepton_gpu_memory_used_bytes"),
                         d.get("lepton_gpu_memory_total_bytes"), d.get("lepton_gpu_temperature_celsius")))
    elif sample is not None:
        seen = {n.node_id: n for n in sample.nodes}
        for nid in sorted(running):
            n = seen.get(nid)
            itype = next((r.itype for r in unfinished if r.node == nid), "-")
            nt.add_row(Text(nid), Text(itype or "-"), str(running[nid]), _num(n and n.cpu_percent),
                       _num(n and n.memory_bytes, 2 ** 20), _rate(n and n.disk_read_bps),
                       _rate(n and n.disk_write_bps), "0" if n else "-")
        nt.caption = "nodes running jobs on this machine (give --metrics-url for every node)"
        host = dict(cpu=sample.cpu_percent, mem=sample.memory_percent, rx=sample.net_rx_bps, tx=sample.net_tx_bps,
                    read=sample.disk_read_bps, write=sample.disk_write_bps)
        gpus = [(str(x.index), x.name, x.utilization_percent, x.memory_used_bytes, x.memory_total_bytes,
                 x.temperature_c) for x in sample.gpus]
    parts.append(nt)
    if host:
        parts.append(Text(f"host: cpu {_num(host['cpu'])} %  memory {_num(host['mem'])} %  "
                          f"network rx {_rate(host['rx'])} tx {_rate(host['tx'])}  "
                          f"disk read {_rate(host['read'])} write {_rate(host['write'])}"))
    if gpus:
        gt = Table(title="GPUs", title_justify="left")
        for c in ("gpu", "name", "util %", "memory GiB", "temp °C"):
            gt.add_column(c)
        for i, name, u, used, total, temp in gpus:
            gt.add_row(i, Text(name), _num(u), f"{_num(used, 2 ** 30)} / {_num(total, 2 ** 30)}", _num(temp))
        parts.append(gt)
    return Group(*parts)


def _num(v, scale: float = 1.0) -> str:
    return "-" if v is None else f"{v / scale:.3g}"


def render_text(renderable, width: int = 120) -> str:
    """One frame as plain text (what the live view shows, for tests and pipes)."""
    import io

    from rich.console import Console

    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None, force_terminal=False).print(renderable)
    return buf.getvalue()
