"""Data-parallel training of the seed CNN on this machine: 1 and 2 training processes
from the same seed through the scheduler's local executor (gloo, DDP), side by side.

Writes benchmarks/results/train-<date>.md: test accuracy, time per epoch (median), time
per step (median), the measured speed-up of 2 workers against the seed's T/n and against
the perf model's prediction (placement's step estimate: the layers as OpSpecs forward and
backward, a worker taken as a one-core c7i.large slice, the all-reduce on loopback not
counted), before and after calibrating it on the 1-worker run's measured step (what the
scheduler's loop does when a train job finishes).

    python benchmarks/bench_train.py [--epochs 20] [--batch-size 32] [--out FILE]
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import tempfile

from lepton_accel.scheduler.catalog import load_catalog
from lepton_accel.scheduler.jobs import parse_workload
from lepton_accel.scheduler.local import LocalExecutor
from lepton_accel.scheduler.store import JobStore
from lepton_accel.perf import PerfModel
from lepton_accel.scheduler.train import observe_run, step_estimate


def run(n: int, epochs: int, batch: int, cat) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        store = JobStore(os.path.join(tmp, "jobs.sqlite"))
        job = parse_workload({"name": f"ddp-{n}", "train": {
            "model": "seed_cnn", "epochs": epochs, "batch_size": batch, "workers": n, "seed": 3,
            "checkpoint_every": {"epochs": 5}}, "constraints": {"instance_types": ["c7i.large"]}})[0]
        (jid,) = store.submit([job])
        ex = LocalExecutor(store, cat, max_workers=1)
        try:
            ex.run(timeout=3600)
        finally:
            ex.close()
        r = store.get(jid)
        store.close()
        if r.state != "done":
            sys.exit(f"{n} workers: {r.state}: {r.error}")
        t = r.result["train"]
        return {"n": n, "acc": t["test_accuracy"], "epoch_s": statistics.median(e["seconds"] for e in t["epochs"]),
                "step_s": t["step_s_median"], "steps_per_epoch": t["steps_per_epoch"],
                "job_s": r.result["measured_s"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--out")
    a = ap.parse_args()
    cat = load_catalog(use_env=False)
    rows = [run(n, a.epochs, a.batch_size, cat) for n in (1, 2)]
    dev = cat["c7i.large"].device()
    train = {"model": "seed_cnn", "batch_size": a.batch_size, "epochs": a.epochs}
    pred = {n: step_estimate(train, dev, n, None, PerfModel()) for n in (1, 2)}
    one, two = rows
    model = PerfModel()             # calibrated on the 1-worker run, then asked about 2
    observe_run(model, train, dev, {"train": {"step_s_median": one["step_s"], "workers": 1}})
    cal = {n: step_estimate(train, dev, n, None, model) for n in (1, 2)}
    date = datetime.date.today().isoformat()
    out = a.out or os.path.join(os.path.dirname(__file__), "results", f"train-{date}.md")
    lines = [f"# Data-parallel training of the seed CNN ({date})", "",
             f"Digits (1437 train / 360 test), {a.epochs} epochs, global batch {a.batch_size}, Adam 3e-3, seed 3;",
             "local executor, gloo over 127.0.0.1, one torch thread per process; this machine: "
             f"{os.cpu_count()} CPU cores, shared with other work (load average "
             f"{os.getloadavg()[0]:.1f} at the end of the runs).",
             f"Command: `python benchmarks/bench_train.py --epochs {a.epochs} --batch-size {a.batch_size}`", "",
             "| workers | test accuracy | epoch s (median) | step s (median) | steps/epoch | job s (incl. start) "
             "| predicted step s | calibrated on 1 worker |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['n']} | {100 * r['acc']:.2f} % | {r['epoch_s']:.3f} | {r['step_s'] * 1e3:.1f} ms | "
                     f"{r['steps_per_epoch']} | {r['job_s']:.1f} | {pred[r['n']]['step_s'] * 1e3:.2f} ms | "
                     f"{cal[r['n']]['step_s'] * 1e3:.1f} ms |")
    sp = one["epoch_s"] / two["epoch_s"]
    lines += ["", f"Speed-up per epoch, 2 workers: measured {sp:.2f}x; the seed's T/n: 2.00x; "
              f"perf model: {pred[1]['run_s'] / pred[2]['run_s']:.2f}x.",
              f"Prediction against measurement, one step on 1 worker: predicted {pred[1]['step_s'] * 1e3:.2f} ms, "
              f"measured {one['step_s'] * 1e3:.1f} ms ({one['step_s'] / pred[1]['step_s']:.1f}x the model).",
              f"Calibrated on that run (factor {cal[2]['calibration']:.1f}), the model predicts "
              f"{cal[2]['step_s'] * 1e3:.1f} ms a step on 2 workers; measured {two['step_s'] * 1e3:.1f} ms "
              f"({two['step_s'] / cal[2]['step_s']:.2f}x). Two workers here share this machine's cores, which "
              "the model, counting n nodes, does not."]
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
