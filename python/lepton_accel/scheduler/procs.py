"""The processes of a job attempt: they die with their parent, and can be found and killed.

A local worker is the leader of its own process group; the commands of a suite run in a
group of their own and carry the attempt's marker (``LEPTON_ACCEL_ATTEMPT=<job>.<attempt>``)
in their environment, which their children inherit. Every process of an attempt is then
either in the worker's group or carries the marker, and the scheduler can kill them all
(on cancel, on a worker's death, before a retry, and after a restart, from the process
group and leader start time recorded in the store). Each process also asks the kernel to
SIGKILL it when its parent dies (``PR_SET_PDEATHSIG``), so a killed scheduler takes its
workers, and a killed worker its commands, with it.

Linux: the lookups read ``/proc``; elsewhere they find nothing beyond the group itself.
"""
from __future__ import annotations

import os
import signal
import time

MARKER = "LEPTON_ACCEL_ATTEMPT"
_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent exits (Linux)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def marker(job_id: str, attempt: int) -> str:
    return f"{job_id}.{attempt}"


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, pgid, start time in clock ticks) of a process, None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rindex(b")") + 2:].split()
    return rest[0].decode(), int(rest[2]), int(rest[19])


def start_time(pid: int) -> int | None:
    s = _stat(pid)
    return None if s is None else s[2]


def _pids() -> list[int]:
    try:
        return [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return []


def _has_marker(pid: int, value: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return value in f.read().split(b"\0")
    except OSError:
        return False


def attempt_processes(pgid: int | None, pg_start: int | None, mark: str | None) -> list[int]:
    """Live (not zombie) processes of an attempt: members of its worker's group, when the
    group's leader is the recorded one (same start time), and processes carrying its marker."""
    me = os.getpid()
    leader_ok = False
    if pgid:
        s = _stat(pgid)
        leader_ok = s is not None and s[1] == pgid and (pg_start is None or s[2] == pg_start)
    want = f"{MARKER}={mark}".encode() if mark else None
    out = []
    if not os.path.isdir("/proc"):
        if leader_ok or pgid:
            try:
                os.killpg(pgid, 0)
                return [pgid]
            except OSError:
                return []
        return []
    for pid in _pids():
        if pid == me:
            continue
        s = _stat(pid)
        if s is None or s[0] in ("Z", "X"):
            continue
        if (leader_ok and s[1] == pgid) or (want is not None and _has_marker(pid, want)):
            out.append(pid)
    return out


def kill_attempt(pgid: int | None, pg_start: int | None, mark: str | None, timeout: float = 10.0) -> bool:
    """SIGKILL every process of an attempt and wait until none is left; False when some
    survived ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while True:
        pids = attempt_processes(pgid, pg_start, mark)
        if not pids:
            return True
        if pgid and pgid in pids or (pgid and any(_stat(p) and _stat(p)[1] == pgid for p in pids)):
            try:
                os.killpg(pgid, signal.SIGKILL)
            except OSError:
                pass
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if time.monotonic() > end:
            return not attempt_processes(pgid, pg_start, mark)
        time.sleep(0.01)
