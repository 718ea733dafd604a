"""Polling for the tests that watch a scheduler, a cluster or training processes."""
import time


def wait_until(cond, timeout: float, what: str, every: float = 0.02):
    """``cond()``'s first truthy value, polled every ``every`` s; fails the test after ``timeout``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        v = cond()
        if v:
            return v
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
