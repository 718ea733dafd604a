"""The elastic rule: when a node type's pool grows or shrinks.

Per instance type, with ``n`` nodes (``slots`` job slots each), ``busy`` running jobs and
``queued`` jobs placed on the type but not started:

* **scale out** when demand = (busy + queued) / (n x slots) exceeds ``scale_out_at``
  (default 0.8) and jobs are waiting: by at least one node, or to as many nodes as run all
  the demand at once; a type with no node gets one as soon as a job waits; never past
  ``max``;
* **scale in** by one idle node when utilisation (busy slots / all slots, averaged over
  ``window_s``) has stayed under ``scale_in_at`` (default 0.4) for the whole window, nothing
  is queued, and the pool is above ``min``.

With ``use_cpu``, the nodes' CPU utilisation (mean over a type's nodes, 0..1 of one core
per node, from the scheduler's samples) votes too (:func:`cpu_vote`): above ``cpu_out_at``
(default 0.8) a type with jobs waiting gets at least one more node even when its slots
are not all taken (its jobs are CPU-bound); at or above ``cpu_in_at`` (default 0.4) no
node of the type is stopped. Both are settable per type (``cpu_per_type``: type ->
(out, in)). Without a sample the vote is neutral and the queue-depth rule alone decides.

The local executor applies the decision to its worker processes; the Ray executor turns
the scale-out target into ``ray.autoscaler.sdk.request_resources`` bundles and leaves scale-in
to the autoscaler's idle timeout.
"""
from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ElasticPolicy:
    scale_out_at: float = 0.8
    scale_in_at: float = 0.4
    window_s: float = 2.0
    min_nodes: int = 0
    max_nodes: int = 2
    per_type: dict = field(default_factory=dict)   # type -> (min, max)
    use_cpu: bool = False
    cpu_out_at: float = 0.8
    cpu_in_at: float = 0.4
    cpu_per_type: dict = field(default_factory=dict)   # type -> (out, in)

    def __post_init__(self):
        for t, (up, down) in {None: (self.cpu_out_at, self.cpu_in_at), **self.cpu_per_type}.items():
            if not 0 <= down < up:
                raise ValueError(f"cpu thresholds{'' if t is None else ' of ' + t}: need 0 <= in ({down}) "
                                 f"< out ({up})")

    def limits(self, itype: str) -> tuple[int, int]:
        return tuple(self.per_type.get(itype, (self.min_nodes, self.max_nodes)))  # type: ignore[return-value]

    def cpu_thresholds(self, itype: str) -> tuple[float, float]:
        return tuple(self.cpu_per_type.get(itype, (self.cpu_out_at, self.cpu_in_at)))  # type: ignore[return-value]

    def target(self, itype: str, nodes: int, busy: int, queued: int, slots: int = 1,
               cpu: float | None = None) -> int:
        """Nodes wanted now for the demand (scale-out side only); ``cpu``: the type's
        mean node CPU utilisation (0..1), used when ``use_cpu``."""
        lo, hi = self.limits(itype)
        want = nodes
        if queued > 0:
            if nodes == 0:
                want = 1
            demand = (busy + queued) / (max(nodes, 1) * slots)
            if demand > self.scale_out_at:   # at least one more node, or enough for all
                want = max(want, nodes + 1, math.ceil((busy + queued) / slots))
            if self.use_cpu and cpu_vote(self, itype, cpu) > 0:
                want = max(want, nodes + 1)
        return max(lo, min(hi, want))


def cpu_vote(policy: ElasticPolicy, itype: str, cpu: float | None) -> int:
    """+1 (CPU says grow), -1 (CPU allows shrinking) or 0, from the type's mean node CPU
    utilisation ``cpu`` (0..1; None: no sample, neutral)."""
    if cpu is None:
        return 0
    up, down = policy.cpu_thresholds(itype)
    return 1 if cpu > up else (-1 if cpu < down else 0)


@dataclass
class UtilisationWindow:
    """Busy-slot fraction of one type, sampled over a sliding time window."""

    window_s: float
    samples: deque = field(default_factory=deque)

    def add(self, busy: int, total: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.samples.append((now, busy / total if total else 0.0))
        while self.samples and self.samples[0][0] < now - self.window_s:
            self.samples.popleft()

    def stayed_under(self, threshold: float, now: float | None = None) -> bool:
        """True when the mean over a full window of history is under ``threshold``."""
        now = time.monotonic() if now is None else now
        if not self.samples or self.samples[0][0] > now - self.window_s * 0.9:
            return False    # not a full window of history yet
        return sum(u for _, u in self.samples) / len(self.samples) < threshold

    def reset(self) -> None:
        self.samples.clear()


def should_scale_in(policy: ElasticPolicy, itype: str, nodes: int, queued: int,
                    window: UtilisationWindow, now: float | None = None, cpu: float | None = None) -> bool:
    lo, _ = policy.limits(itype)
    if policy.use_cpu and cpu is not None and cpu_vote(policy, itype, cpu) >= 0:
        return False           # its nodes are still using CPU
    return nodes > lo and queued == 0 and window.stayed_under(policy.scale_in_at, now)
