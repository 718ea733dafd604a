"""Elastic train jobs (``workers: {min, max}``): an epoch interrupted at one world size and
resumed at another sees every sample of its order once; a job that loses a worker while its
type shrinks resumes from the checkpoint on the workers that are left."""
import json
import os
import signal
import threading

import pytest

from lepton_accel.scheduler.train import ShardSampler, _consumed


@pytest.mark.parametrize("size,per_rank,worlds,batches", [
    (97, 8, (2, 1), (3,)),          # a prime, shrinking
    (1437, 16, (2, 1), (20,)),      # the digits split, the size the job below uses
    (101, 5, (1, 3, 2), (4, 2)),    # growing then shrinking, twice interrupted
    (64, 4, (4, 2), (0,)),          # interrupted before its first batch
])
def test_a_resharded_epoch_sees_its_order_once(size, per_rank, worlds, batches):
    import torch

    seed, epoch = 5, 2
    g = torch.Generator()
    g.manual_seed(seed + epoch)
    order = torch.randperm(size, generator=g).tolist()
    seen, state = [], {"offset": 0, "position": 0}
    for i, world in enumerate(worlds):
        ranks = [list(ShardSampler(size, r, world, seed, epoch, state["offset"])) for r in range(world)]
        steps = batches[i] if i < len(batches) else None      # the last size runs to the end
        n = len(ranks[0]) if steps is None else min(steps * per_rank, len(ranks[0]))
        for b in range(0, n, per_rank):                       # batch b on every rank
            for r in range(world):
                seen.extend(ranks[r][b:b + per_rank])
        if steps is not None:                                 # a checkpoint, then a new size
            state = {"offset": min(_consumed({**state, "position": steps}, per_rank, world), size), "position": 0}
            # what was consumed is exactly the start of the epoch's order, so far
            assert len(seen) == state["offset"] and set(seen) == set(order[:state["offset"]])
    # at the end: every sample of the order once, plus the last size's padding (repeats of
    # the rest's start, fewer than one a rank, as DistributedSampler pads)
    assert set(seen) == set(range(size)) and 0 <= len(seen) - size < worlds[-1]


torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

from lepton_accel.scheduler.catalog import load_catalog  # noqa: E402
from lepton_accel.scheduler.elastic import ElasticPolicy  # noqa: E402
from lepton_accel.scheduler.jobs import parse_workload  # noqa: E402
from lepton_accel.scheduler.local import LocalExecutor  # noqa: E402
from lepton_accel.scheduler.store import JobStore  # noqa: E402
from lepton_accel.scheduler.train import RANKS, checkpoint_info, read_progress  # noqa: E402
from waiting import wait_until  # noqa: E402

CAT = load_catalog(use_env=False)


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc")
def test_an_elastic_job_resumes_on_the_workers_left(tmp_path):
    job = parse_workload({"name": "elastic", "train": {
        "model": "seed_cnn", "epochs": 2, "batch_size": 32, "workers": {"min": 1, "max": 2}, "lr": 3e-3,
        "checkpoint_every": {"steps": 8}, "seed": 3}, "policy": "min_time",
        "constraints": {"instance_types": ["c7i.large"], "spot": False}})[0]
    db = tmp_path / "jobs.sqlite"
    store = JobStore(db)
    (jid,) = store.submit([job])
    ex = LocalExecutor(store, CAT, max_workers=1, elastic=ElasticPolicy(max_nodes=2))
    adir = os.path.join(str(db) + ".artifacts", jid)
    err = []

    def run():
        try:
            ex.run(timeout=300)
        except BaseException as exc:  # surfaced below
            err.append(exc)

    th = threading.Thread(target=run, daemon=True)
    th.start()
    try:
        def mid_epoch():
            ck, steps = checkpoint_info(adir), read_progress(adir)
            return ck and ck["position"] > 0 and steps and ck["step"] < steps[-1]["step"] < 40
        wait_until(mid_epoch, 180, "a mid-epoch checkpoint")
        with open(os.path.join(adir, RANKS)) as f:
            pids = json.load(f)["pids"]
        assert len(pids) == 2
        ex.loop.elastic = ElasticPolicy(max_nodes=1)       # the type shrinks to one node ...
        os.kill(pids[1], signal.SIGKILL)                    # ... and a worker is lost
        th.join(300)
        assert not th.is_alive() and not err, err
    finally:
        ex.close()
    r = store.get(jid)
    assert r.state == "done" and r.attempts == 2, (r.state, r.error)
    assert r.workers == 1 and r.result["workers"] == 1
    ck = r.result["resumed_from"]
    assert ck["world"] == 2 and ck["epoch"] == 0 and ck["position"] > 0
    steps = read_progress(adir)
    first = [s for s in steps if s["attempt"] == 1]
    second = [s for s in steps if s["attempt"] == 2]
    assert {s["world"] for s in first} == {2} and {s["world"] for s in second} == {1}
    # nothing before the checkpoint is recomputed; the rest of epoch 1 is re-sharded onto one
    # worker (global batch 32 kept: 32 a rank), then epoch 2 runs whole
    rest = 1437 - ck["position"] * 16 * 2
    expected = -(-rest // 32) + -(-1437 // 32)
    assert [s["step"] for s in second] == list(range(ck["step"] + 1, ck["step"] + expected + 1))
    assert r.result["train"]["steps"] == ck["step"] + expected
    hist = r.result["train"]["epochs"]
    assert [h["workers"] for h in hist] == [1, 1] and hist[0]["resumed"]
    assert r.result["train"]["test_accuracy"] > 0.85
    retried = [e for e in store.events(jid) if e["state"] == "retried"]
    assert len(retried) == 1 and "rank 1 of 2" in retried[0]["detail"]
    store.close()
