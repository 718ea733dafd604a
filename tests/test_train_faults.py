"""Train jobs under faults: a training process killed mid-epoch, the scheduler killed
mid-job. The job resumes from its last checkpoint, records ``retried`` with the cause,
recomputes nothing before the checkpoint, and ends where an undisturbed run ends."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")

from lepton_accel.scheduler.catalog import load_catalog  # noqa: E402
from lepton_accel.scheduler.jobs import parse_workload  # noqa: E402
from lepton_accel.scheduler.local import LocalExecutor  # noqa: E402
from lepton_accel.scheduler.store import JobStore  # noqa: E402
from lepton_accel.scheduler.train import CHECKPOINT, RANKS, checkpoint_info, read_progress  # noqa: E402

CAT = load_catalog(use_env=False)
CLI = [sys.executable, "-m", "lepton_accel.scheduler.cli"]
# 1437 training digits, global batch 32 on 2 ranks: 45 steps an epoch
TRAIN = {"model": "seed_cnn", "epochs": 2, "batch_size": 32, "workers": 2, "lr": 3e-3,
         "checkpoint_every": {"steps": 8}, "seed": 3}
STEPS = 2 * 45


def _job(**over):
    return parse_workload({"name": "train-fault", "train": {**TRAIN, **over},
                           "constraints": {"instance_types": ["c7i.large"]}})[0]


def _wait(cond, timeout=120.0, what="condition"):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        v = cond()
        if v:
            return v
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _adir(db, jid):
    return os.path.join(str(db) + ".artifacts", jid)


def _mid_epoch(adir, before=40):
    """Wait until a checkpoint inside the first epoch exists and training went past it."""
    def ready():
        ck = checkpoint_info(adir)
        steps = read_progress(adir)
        return ck and 0 < ck["position"] and steps and steps[-1]["step"] > ck["step"] and steps[-1]["step"] < before
    _wait(ready, what="a mid-epoch checkpoint")
    with open(os.path.join(adir, RANKS)) as f:
        return json.load(f)["pids"]


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False


def _check_resumed(store, jid, adir, total=STEPS, every=TRAIN["checkpoint_every"]["steps"]):
    r = store.get(jid)
    assert r.state == "done" and r.attempts == 2, (r.state, r.error)
    retried = [e for e in store.events(jid) if e["state"] == "retried"]
    assert len(retried) == 1
    res = r.result
    assert res["checkpoints"] and res["model_path"].startswith(adir)
    steps = read_progress(adir)
    first = [s["step"] for s in steps if s["attempt"] == 1]
    second = [s["step"] for s in steps if s["attempt"] == 2]
    resumed_at = res["resumed_from"]["step"]
    # the second attempt starts right after the checkpoint and runs every later step once
    assert second == list(range(resumed_at + 1, total + 1))
    assert first == list(range(1, len(first) + 1)) and first[-1] >= resumed_at
    assert first[-1] - resumed_at <= every      # work lost
    assert res["train"]["steps"] == total
    return r, retried[0]["detail"]


# A user's entry point beside the job file: a small classifier on separable blobs, whose
# loss also waits a little so that a step lasts long enough to be killed in the middle.
ENTRY = '''
import time, torch

def build(seed):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(4, 8, generator=g) * 4
    y = torch.arange(640) % 4
    x = centres[y] + torch.randn(640, 8, generator=g)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    data = torch.utils.data.TensorDataset
    def loss(out, target):
        time.sleep(0.01)
        return torch.nn.functional.cross_entropy(out, target)
    return model, data(x[:512], y[:512]), data(x[512:], y[512:]), loss
'''


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc")
def test_a_killed_process_of_an_entry_point_job_resumes_from_its_checkpoint(tmp_path):
    (tmp_path / "blobs.py").write_text(ENTRY)
    job = parse_workload({"name": "blobs", "train": {"entry": "blobs:build", "epochs": 2, "batch_size": 32,
                                                     "workers": 2, "checkpoint_every": {"steps": 4}},
                          "estimate_s": 30},
                         base_dir=tmp_path)[0]
    db = tmp_path / "jobs.sqlite"
    store = JobStore(db)
    (jid,) = store.submit([job])
    ex = LocalExecutor(store, CAT, max_workers=1)
    err = []
    th = threading.Thread(target=lambda: _run(ex, err), daemon=True)
    th.start()
    try:
        pids = _mid_epoch(_adir(db, jid), before=14)     # 16 steps an epoch
        os.kill(pids[0], signal.SIGKILL)
        th.join(240)
        assert not th.is_alive() and not err, err
    finally:
        ex.close()
    r, why = _check_resumed(store, jid, _adir(db, jid), total=32, every=4)
    assert f"rank 0 of 2 (pid {pids[0]}) killed by SIGKILL" in why
    assert r.result["train"]["test_accuracy"] > 0.8
    store.close()


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc")
def test_a_killed_training_process_resumes_from_its_checkpoint(tmp_path):
    db = tmp_path / "jobs.sqlite"
    store = JobStore(db)
    (jid,) = store.submit([_job()])
    ex = LocalExecutor(store, CAT, max_workers=1)
    err = []
    th = threading.Thread(target=lambda: _run(ex, err), daemon=True)
    th.start()
    try:
        pids = _mid_epoch(_adir(db, jid))
        os.kill(pids[1], signal.SIGKILL)
        th.join(240)
        assert not th.is_alive() and not err, err
    finally:
        ex.close()
    r, why = _check_resumed(store, jid, _adir(db, jid))
    assert f"rank 1 of 2 (pid {pids[1]}) killed by SIGKILL" in why and "checkpoint at step" in why
    assert not any(_alive(p) for p in pids)
    assert r.result["train"]["test_accuracy"] > 0.85
    store.close()


def _run(ex, err):
    try:
        ex.run(timeout=240)
    except BaseException as exc:  # surfaced by the test
        err.append(exc)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc")
def test_a_killed_scheduler_resumes_the_job_from_its_checkpoint(tmp_path):
    db = tmp_path / "jobs.sqlite"
    store = JobStore(db)
    (jid,) = store.submit([_job()])
    serve = CLI + ["serve", "--until-idle", "--store", str(db)]
    p = subprocess.Popen(serve, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        pids = _mid_epoch(_adir(db, jid))
        p.send_signal(signal.SIGKILL)
        p.wait()
    finally:
        if p.poll() is None:
            p.kill()
    _wait(lambda: not any(_alive(x) for x in pids), 30, "the training processes to die with the scheduler")
    assert store.get(jid).state == "running"
    p2 = subprocess.run(serve, capture_output=True, text=True, timeout=300)
    assert p2.returncode == 0, p2.stderr
    r, why = _check_resumed(store, jid, _adir(db, jid))
    assert r.result["train"]["test_accuracy"] > 0.85
    store.close()


@pytest.mark.slow
def test_resumed_and_undisturbed_runs_end_alike(tmp_path):
    """The killed run's final accuracy against an undisturbed run of the same job."""
    results = {}
    for label in ("undisturbed", "killed"):
        db = tmp_path / f"{label}.sqlite"
        store = JobStore(db)
        (jid,) = store.submit([_job()])
        ex = LocalExecutor(store, CAT, max_workers=1)
        err = []
        th = threading.Thread(target=lambda: _run(ex, err), daemon=True)
        th.start()
        try:
            if label == "killed":
                os.kill(_mid_epoch(_adir(db, jid))[0], signal.SIGKILL)
            th.join(240)
            assert not th.is_alive() and not err, err
        finally:
            ex.close()
        r = store.get(jid)
        assert r.state == "done", r.error
        results[label] = r.result["train"]
        store.close()
    a, b = results["undisturbed"]["test_accuracy"], results["killed"]["test_accuracy"]
    assert abs(a - b) <= 0.01, (a, b)


@pytest.mark.slow
def test_one_and_two_workers_reach_97_percent_on_digits(tmp_path):
    """The same job from the same seed on 1 and 2 training processes."""
    acc = {}
    for n in (1, 2):
        db = tmp_path / f"w{n}.sqlite"
        store = JobStore(db)
        (jid,) = store.submit([_job(workers=n, epochs=20, checkpoint_every={"epochs": 5})])
        ex = LocalExecutor(store, CAT, max_workers=1)
        try:
            ex.run(timeout=600)
        finally:
            ex.close()
        r = store.get(jid)
        assert r.state == "done", r.error
        t = r.result["train"]
        assert t["workers"] == n and t["per_rank_batch"] == 32 // n and len(t["epochs"]) == 20
        acc[n] = t["test_accuracy"]
        store.close()
    assert acc[1] >= 0.97 and acc[2] >= 0.97, acc
