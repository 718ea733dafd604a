"""The ``train`` job kind: data-parallel training on n local processes.

A worker that runs a train job starts n training processes (``python -m
lepton_accel.scheduler.train``), which join one ``torch.distributed`` group (gloo, over
127.0.0.1), each train on its shard of the data (``DistributedSampler``) with the
gradients averaged every step (``DistributedDataParallel``). Rank 0 writes checkpoints
(model, optimizer, step, the position in the epoch, the metrics so far) into the job's
artifact directory; a later attempt of the same job starts from the newest one, so a
lost process or a restarted scheduler costs at most ``checkpoint_every`` of work.

Every process of an attempt carries the attempt's marker, dies with the worker
(``PR_SET_PDEATHSIG``) and stays in the worker's process group, so the scheduler's
kill of an attempt reaches all of them. A training process that ends badly ends the
attempt: the others are killed and the result says ``lost`` with the cause, which the
executor records as ``retried``.

Torch runs on one thread per process (on a small machine the pools of n processes
would otherwise fight over the cores).
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from . import procs
from .jobs import Job

CHECKPOINT = "checkpoint.pt"
PROGRESS = "progress.jsonl"      # one line per step computed: {"attempt", "step", "epoch"}
RANKS = "ranks.json"             # the training processes of the running attempt
DEFAULT_TIMEOUT_S = 3600.0


def worker_range(train: dict) -> tuple[int, int] | None:
    """The worker counts a train job accepts: (n, n) for a number, (min, max) for an elastic
    job, None for ``auto`` (placement's choice)."""
    w = train["workers"]
    if w == "auto":
        return None
    if isinstance(w, dict):
        return int(w["min"]), int(w["max"])
    return int(w), int(w)


def workers_for(train: dict, placed: int | None = None) -> int:
    """The number of training processes to start: the job's own number, else the count
    placement chose (kept within an elastic job's range); without a placement (a job
    placed by an earlier scheduler), ``auto`` runs one per core here, at most 2, and an
    elastic job its largest size."""
    rng = worker_range(train)
    if rng is None:
        return int(placed) if placed else max(1, min(2, os.cpu_count() or 1))
    lo, hi = rng
    return min(max(int(placed), lo), hi) if placed else hi


#: training samples of the shipped digits split (1,797 images, 20 % held out)
DIGITS_TRAIN = 1437
#: the worker counts ``workers: auto`` weighs
AUTO_WORKERS = (1, 2, 4, 8)


def seed_cnn_layers(batch: int, input_size: int = 16, channels: int = 1, classes: int = 10):
    """The seed CNN's step as OpSpecs: forward, and backward (grad-input and grad-weight of
    each conv, the two GEMMs of each dense layer), for one rank's batch; and its parameter
    count (the gradient that is all-reduced)."""
    from ..ops import CONV2D_GRAD_INPUT, CONV2D_GRAD_WEIGHT, conv2d_spec, matmul_spec

    s1 = input_size - 2
    p1 = s1 // 2
    s2 = p1 - 2
    flat = 64 * (s2 // 2) ** 2
    f32 = "float32"
    specs = []
    params = 0
    for cin, cout, hw, first in ((channels, 32, input_size, True), (32, 64, p1, False)):
        x, w, oh = (batch, cin, hw, hw), (cout, cin, 3, 3), hw - 2
        dy = (batch, cout, oh, oh)
        specs.append(conv2d_spec(x, f32, w, f32, bias_shape=(cout,), bias_dtype=f32, activation="relu"))
        specs.append(CONV2D_GRAD_WEIGHT.spec((x, dy), (f32, f32), kernel_hw=(3, 3)))
        if not first:     # the input's gradient is not needed
            specs.append(CONV2D_GRAD_INPUT.spec((dy, w), (f32, f32), input_hw=(hw, hw)))
        params += cout * cin * 9 + cout
    for fin, fout in ((flat, 64), (64, classes)):
        specs.append(matmul_spec((batch, fin), f32, (fin, fout), f32, bias_shape=(fout,), bias_dtype=f32))
        specs.append(matmul_spec((batch, fout), f32, (fout, fin), f32))     # dX = dY W^T
        specs.append(matmul_spec((fin, batch), f32, (batch, fout), f32))    # dW = X^T dY
        params += fin * fout + fout
    return specs, params


def step_estimate(train: dict, device, n: int, network_gbps: float | None, model=None,
                  calibrated: bool = True) -> dict:
    """One step on n data-parallel workers of a device: compute of a rank's share of the
    global batch (the perf model, forward and backward), plus the ring all-reduce of the
    gradient, 2 (n-1)/n x its bytes over the network. With ``calibrated``, the compute is
    scaled by what earlier training runs measured on devices of that kind (see
    :meth:`~lepton_accel.perf.PerfModel.observe_train_step`)."""
    from ..perf import MODEL
    from .jobs import SpecCosts

    model = model or MODEL
    per_rank = max(1, train["batch_size"] // n)
    specs, params = seed_cnn_layers(per_rank)
    layers = sum(model.estimate(SpecCosts(sp), device, data_on_host=True).total_s for sp in specs)
    factor = model.train_step_factor(device.kind) if calibrated else 1.0
    compute = layers * factor
    grad_bytes = 4 * params
    comm = 0.0 if n == 1 or not network_gbps else 2 * (n - 1) / n * grad_bytes / (network_gbps * 1e9 / 8)
    steps = math.ceil(DIGITS_TRAIN / (per_rank * n))
    return {"workers": n, "compute_s": compute, "allreduce_s": comm, "step_s": compute + comm,
            "steps_per_epoch": steps, "run_s": train["epochs"] * steps * (compute + comm),
            "grad_bytes": grad_bytes, "layers_s": layers, "calibration": factor}


def observe_run(model, train: dict, device, result: dict) -> None:
    """Feed a finished run's median step into the perf model (seed-CNN jobs, which the
    model times by their layers; an entry point's own estimate is left alone)."""
    t = (result or {}).get("train") or {}
    measured, n = t.get("step_s_median"), t.get("workers")
    if "entry" in train or not measured or not n:
        return
    modelled = step_estimate(train, device, int(n), None, model, calibrated=False)["compute_s"]
    model.observe_train_step(device.kind, modelled, float(measured))


def worker_counts(train: dict, cap: int | None = None) -> tuple[int, ...]:
    """The worker counts placement weighs: the job's number; for ``auto`` 1, 2, 4, 8; for
    ``{min, max}`` both ends and the powers of two between. ``cap`` (the nodes the type may
    have) bounds ``auto`` and elastic jobs; a named number is kept."""
    rng = worker_range(train)
    if rng is None:
        ns = AUTO_WORKERS
        if cap is not None:
            ns = tuple(n for n in ns if n <= cap) or (1,)
        return ns
    lo, hi = rng
    if lo == hi and not isinstance(train["workers"], dict):
        return (lo,)
    if cap is not None:
        hi = min(hi, cap)
        if hi < lo:
            return ()
    return tuple(sorted({lo, hi, *(n for n in AUTO_WORKERS if lo < n < hi)}))


def weigh(train: dict, device, network_gbps, model=None, cap: int | None = None) -> list[dict]:
    """The options placement considers for a train job: one per worker count."""
    return [step_estimate(train, device, n, network_gbps, model) for n in worker_counts(train, cap)]


def artifact_dir(root: str, job_id: str) -> str:
    path = os.path.join(root, job_id)
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child_setup() -> None:
    procs.die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with {code}"


def _tail(path: str, n: int = 1500) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(f.tell() - n, 0))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def checkpoint_info(adir: str) -> dict | None:
    """What the newest checkpoint holds (step, epoch, position), without the tensors."""
    path = os.path.join(adir, CHECKPOINT + ".json")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def run_train(job: Job, *, job_id: str, attempt: int, artifacts: str, env: dict,
              abandon=None, workers: int | None = None) -> dict[str, Any]:
    """Run one attempt of a train job on n local processes (``workers``: the count placement
    chose; see :func:`workers_for`); the job's result (or the reason it was lost)."""
    train = job.train
    missing = [m for m in ("torch", *(("sklearn",) if train.get("data") == "digits" else ()))
               if importlib.util.find_spec(m) is None]
    if missing:
        return {"ok": False, "backend": "cpu", "error": f"train jobs need {' and '.join(missing)} "
                "(pip install \"lepton_accel[torch]\", PyTorch's CPU build)"}
    n = workers_for(train, workers)
    adir = artifact_dir(artifacts, job_id)
    before = checkpoint_info(adir)
    with open(os.path.join(adir, "job.json"), "w") as f:
        json.dump({"train": train, "base_dir": os.path.realpath(job.base_dir), "workers": n}, f)
    port = _free_port()
    env = {**env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    t0 = time.perf_counter()
    ranks = []
    try:
        for r in range(n):
            log = open(os.path.join(adir, f"rank{r}.log"), "wb")
            try:
                ranks.append(subprocess.Popen(
                    [sys.executable, "-m", "lepton_accel.scheduler.train", adir, str(r), str(n), str(attempt)],
                    env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    preexec_fn=_child_setup, cwd=adir))
            finally:
                log.close()
        with open(os.path.join(adir, RANKS), "w") as f:
            json.dump({"attempt": attempt, "pids": [p.pid for p in ranks]}, f)
        timeout = float(train.get("timeout_s", DEFAULT_TIMEOUT_S))
        while True:
            codes = [p.poll() for p in ranks]
            bad = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
            if bad:
                time.sleep(0.3)             # a peer's death makes the others fail too: find the first cause
                codes = [p.poll() for p in ranks]
                bad = sorted(((r, c) for r, c in enumerate(codes) if c not in (None, 0)),
                             key=lambda rc: (rc[1] > 0, rc[0]))
                r, c = bad[0]
                ck = checkpoint_info(adir)
                why = (f"training process rank {r} of {n} (pid {ranks[r].pid}) {_describe_exit(c)}; "
                       + (f"resuming from the checkpoint at step {ck['step']}" if ck else "no checkpoint yet"))
                if c > 0:
                    why += f"; its output ends: {_tail(os.path.join(adir, f'rank{r}.log'), 600)}"
                    return {"ok": False, "backend": "cpu", "error": why, "measured_s": time.perf_counter() - t0}
                return {"ok": False, "lost": True, "backend": "cpu", "error": why,
                        "measured_s": time.perf_counter() - t0}
            if all(c == 0 for c in codes):
                break
            if abandon is not None and abandon():
                return {"ok": False, "error": "abandoned: the scheduler is gone"}
            if time.perf_counter() - t0 > timeout:
                return {"ok": False, "backend": "cpu", "error": f"training timed out after {timeout:g} s"}
            time.sleep(0.05)
    finally:
        for p in ranks:
            if p.poll() is None:
                p.kill()
        for p in ranks:
            p.wait()
    with open(os.path.join(adir, "result.json")) as f:
        metrics = json.load(f)
    measured = time.perf_counter() - t0
    return {"ok": True, "backend": "cpu", "measured_s": measured, "workers": n,
            "resumed_from": before, "train": metrics, "model_path": metrics["model_path"],
            "artifacts": adir, "checkpoints": metrics["checkpoints"]}


# ---- one training process ----------------------------------------------------------------
def _build(train: dict, base_dir: str):
    """(model, train dataset, test dataset, loss function) of a train section."""
    import torch

    if "entry" in train:
        mod, _, fn = train["entry"].partition(":")
        if base_dir not in sys.path:         # a module beside the job file
            sys.path.insert(0, base_dir)
        built = getattr(importlib.import_module(mod), fn)(seed=train["seed"])
        model, train_ds, test_ds, loss = built
        return model, train_ds, test_ds, loss, {}
    from ..torch import cnn

    data = train["data"]
    if data != "digits" and not os.path.isabs(data):
        data = os.path.join(base_dir, data)
    ds = cnn.load_data(data, seed=train["seed"])
    model = cnn.build_model(train["layers"], seed=train["seed"], num_classes=len(ds.classes))
    tds = torch.utils.data.TensorDataset(ds.train.x, ds.train.y)
    vds = torch.utils.data.TensorDataset(ds.test.x, ds.test.y)
    extra = {"classes": ds.classes, "normalize": [ds.mean, ds.std], "config": dict(model.config)}
    return model, tds, vds, cnn.loss_fn, extra


def _evaluate(model, ds, loss_fn) -> tuple[float, float]:
    import torch

    model.eval()
    total, correct, n = 0.0, 0, 0
    with torch.no_grad():
        for xb, yb in torch.utils.data.DataLoader(ds, batch_size=256):
            out = model(xb)
            total += float(loss_fn(out, yb)) * len(yb)
            correct += int((out.argmax(1) == yb).sum())
            n += len(yb)
    model.train()
    return total / max(n, 1), correct / max(n, 1)


def _save(path: str, blob: dict, info: dict) -> None:
    import torch

    tmp = path + ".tmp"
    torch.save(blob, tmp)
    os.replace(tmp, path)                  # a kill mid-write leaves the previous checkpoint
    with open(path + ".json.tmp", "w") as f:
        json.dump(info, f)
    os.replace(path + ".json.tmp", path + ".json")


class ShardSampler:
    """A rank's share of an epoch's shuffled order, from a global offset on.

    The epoch's order is ``randperm(len)`` seeded by ``seed + epoch`` (``DistributedSampler``'s);
    the samples from ``offset`` on are padded to a multiple of the world size by repeating
    their start, and rank r takes every world-th of them from r. At offset 0 this is exactly
    ``DistributedSampler`` (shuffle, no drop_last); after b batches of k samples on each of n
    ranks, the first b·k·n samples of the order are the ones consumed, so an epoch resumed at a
    different world size sees the rest of the same order, re-sharded.
    """

    def __init__(self, size: int, rank: int, world: int, seed: int, epoch: int = 0, offset: int = 0):
        self.size, self.rank, self.world, self.seed = size, rank, world, seed
        self.epoch, self.offset = epoch, min(max(offset, 0), size)
        rest = size - self.offset
        self.num_samples = math.ceil(rest / world) if rest else 0

    def _indices(self) -> list[int]:
        import torch

        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        rest = torch.randperm(self.size, generator=g).tolist()[self.offset:]
        if not rest:
            return []
        total = self.num_samples * self.world
        while len(rest) < total:
            rest += rest[:total - len(rest)]
        return rest[self.rank:total:self.world]

    def __iter__(self):
        return iter(self._indices())

    def __len__(self) -> int:
        return self.num_samples


def _consumed(state: dict, per_rank: int, world: int) -> int:
    """Samples of the current epoch's order done at the checkpoint (all ranks together)."""
    return state.get("offset", 0) + state["position"] * per_rank * world


def train_ranks(spec: dict, adir: str, rank: int, world: int, attempt, *, wrap_model, wrap_loader=None,
                resume: str | None = None, on_checkpoint=None, run: int | None = None) -> dict | None:
    """One rank's training: the loop the local processes and the Ray Train workers share.

    The process group exists already; ``wrap_model`` makes the model data-parallel (DDP, or
    Ray Train's ``prepare_model``), ``wrap_loader`` the loaders. State comes from the
    checkpoint file ``resume`` (default: the job's own); a checkpoint written at a different
    world size resumes the epoch at its global position, re-sharded. ``on_checkpoint(dir,
    info)`` is called on every rank after each checkpoint (``dir``: where rank 0 wrote it,
    None on the others). Returns rank 0's result (None elsewhere)."""
    import torch
    from torch.utils.data import DataLoader

    torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1, user_api="blas")
    except ImportError:
        pass
    train = spec["train"]
    model, train_ds, test_ds, loss_fn, extra = _build(train, spec["base_dir"])
    per_rank = max(1, train["batch_size"] // world)
    opt_cls = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}[train["optimizer"]]
    opt = opt_cls(model.parameters(), lr=train["lr"])
    ckpt_path = os.path.join(adir, CHECKPOINT)
    resume = resume or ckpt_path
    state = {"step": 0, "epoch": 0, "position": 0, "offset": 0, "world": world, "history": [],
             "checkpoints": [], "step_s": []}
    if os.path.exists(resume):
        blob = torch.load(resume, weights_only=False)
        model.load_state_dict(blob["model"])
        opt.load_state_dict(blob["optimizer"])
        state = {"offset": 0, **blob["state"]}
        was = int(state.get("world", world))
        if was != world:     # re-shard: the rest of the epoch's order over the new ranks
            state["offset"] = min(_consumed(state, max(1, train["batch_size"] // was), was), len(train_ds))
            state["position"] = 0
        state["world"] = world
    ddp = wrap_model(model)
    wrap_loader = wrap_loader or (lambda dl: dl)
    every = train["checkpoint_every"]
    progress = open(os.path.join(adir, PROGRESS), "a") if rank == 0 else None

    def checkpoint() -> None:
        info = {"step": state["step"], "epoch": state["epoch"], "position": state["position"],
                "offset": state["offset"], "world": world, "attempt": attempt, "time": time.time()}
        where = None
        if rank == 0:
            state["checkpoints"].append(info)
            _save(ckpt_path, {"model": model.state_dict(), "optimizer": opt.state_dict(), "state": state}, info)
            where = adir
        if on_checkpoint is not None:
            on_checkpoint(where, info)

    for epoch in range(state["epoch"], train["epochs"]):
        sampler = ShardSampler(len(train_ds), rank, world, train["seed"], epoch, state["offset"])
        loader = wrap_loader(DataLoader(train_ds, batch_size=per_rank, sampler=sampler))
        batches = len(loader)
        seen, total_loss, correct, t_epoch = 0, 0.0, 0, time.perf_counter()
        for i, (xb, yb) in enumerate(loader):
            if i < state["position"]:          # done before the checkpoint: skipped, not recomputed
                continue
            t = time.perf_counter()
            out = ddp(xb)
            loss = loss_fn(out, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()                    # DDP averages the gradients across the ranks here
            opt.step()
            state["step"] += 1
            state["position"] = i + 1
            state["step_s"].append(time.perf_counter() - t)
            seen += len(yb)
            total_loss += loss.item() * len(yb)
            correct += int((out.detach().argmax(1) == yb).sum())
            if progress is not None:
                rec = {"attempt": attempt, "step": state["step"], "epoch": epoch, "world": world}
                if run is not None:
                    rec["run"] = run
                progress.write(json.dumps(rec) + "\n")
                progress.flush()
            if "steps" in every and state["step"] % every["steps"] == 0 and state["position"] < batches:
                checkpoint()
        test_loss, test_acc = _evaluate(model, test_ds, loss_fn) if rank == 0 else (None, None)
        state["history"].append({"epoch": epoch + 1, "loss": total_loss / max(seen, 1),
                                 "accuracy": correct / max(seen, 1), "test_loss": test_loss,
                                 "test_accuracy": test_acc, "seconds": time.perf_counter() - t_epoch,
                                 "attempt": attempt, "workers": world,
                                 "resumed": seen < len(sampler) or state["offset"] > 0})
        state["epoch"], state["position"], state["offset"] = epoch + 1, 0, 0
        if "steps" in every or (epoch + 1) % every["epochs"] == 0 or epoch + 1 == train["epochs"]:
            checkpoint()
    if progress is not None:
        progress.close()
    if rank != 0:
        return None
    model_path = os.path.join(adir, "model.pt")
    torch.save({"state_dict": model.state_dict(), **extra}, model_path)
    step_s = sorted(state["step_s"])
    result = {"epochs": state["history"], "steps": state["step"], "workers": world,
              "steps_per_epoch": math.ceil(len(train_ds) / (per_rank * world)), "per_rank_batch": per_rank,
              "step_s_median": step_s[len(step_s) // 2] if step_s else None,
              "test_accuracy": state["history"][-1]["test_accuracy"] if state["history"] else None,
              "checkpoints": state["checkpoints"], "model_path": model_path}
    with open(os.path.join(adir, "result.json.tmp"), "w") as f:
        json.dump(result, f)
    os.replace(os.path.join(adir, "result.json.tmp"), os.path.join(adir, "result.json"))
    return result


def train_process(adir: str, rank: int, world: int, attempt: int) -> None:
    """A local training process: joins the gloo group, trains its rank under DDP."""
    import datetime

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    with open(os.path.join(adir, "job.json")) as f:
        spec = json.load(f)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    train_ranks(spec, adir, rank, world, attempt, wrap_model=DistributedDataParallel)
    dist.barrier()
    dist.destroy_process_group()


def read_progress(adir: str) -> list[dict]:
    """The steps computed, in order, over every attempt (rank 0's record)."""
    try:
        with open(os.path.join(adir, PROGRESS)) as f:
            return [json.loads(line) for line in f if line.strip()]
    except OSError:
        return []


if __name__ == "__main__":
    train_process(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
