"""The seed's image-recognition CNN, its data and its training, on our ops.

Layer for layer: Conv2D(32, 3x3, ReLU) -> MaxPool 2x2 -> Conv2D(64, 3x3, ReLU) ->
MaxPool 2x2 -> Flatten -> Dense(64, ReLU) -> Dense(10, softmax); Adam, categorical
cross-entropy, a set number of epochs, the trained model saved. The convolutions and dense
layers run on our ops (``layers="lepton"``) or on PyTorch's own (``layers="torch"``, the
peer the tests and the benchmark compare with); pooling and the loss are PyTorch's. The
softmax sits in the loss (``cross_entropy`` is softmax followed by categorical
cross-entropy, computed stably) and in :func:`predict`.

Data: scikit-learn's handwritten digits (1,797 8x8 images shipped with the package, no
download), upsampled to the input size, or the seed's folder layout (``train/`` and
``test/`` of images named ``<label>.<n>.<ext>``, read with Pillow).

:func:`train` is the entry point (``lepton_accel.torch.cnn:train``): keyword arguments in,
a JSON-able dict of metrics out.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as TF

from .nn import convert

INPUT_SIZE = 16          # digits' 8x8 upsampled 2x: small enough for a simulated int8 core
LAYERS = ("lepton", "torch")


class SeedCNN(torch.nn.Sequential):
    """The seed's CNN as PyTorch layers (``lepton_accel.torch.convert`` moves it onto ours).

    Indices in the state_dict: 0 conv 32, 3 conv 64, 7 dense 64, 9 dense classes."""

    def __init__(self, input_size: int = INPUT_SIZE, channels: int = 1, num_classes: int = 10):
        s = input_size
        for _ in range(2):
            s = (s - 2) // 2          # 3x3 valid conv, then 2x2 pool
        if s < 1:
            raise ValueError(f"input_size: {input_size} is too small for two 3x3 conv + 2x2 "
                             "pool stages (at least 10)")
        super().__init__(
            torch.nn.Conv2d(channels, 32, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(32, 64, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Flatten(),
            torch.nn.Linear(64 * s * s, 64), torch.nn.ReLU(),
            torch.nn.Linear(64, num_classes),
        )
        self.config = {"input_size": input_size, "channels": channels,
                       "num_classes": num_classes}


def build_model(layers: str = "lepton", *, seed: int = 0, backend: str = "auto",
                **config) -> SeedCNN:
    """A freshly initialised SeedCNN from ``seed`` (PyTorch's default initialisation,
    global RNG untouched), on our layers or PyTorch's."""
    if layers not in LAYERS:
        raise ValueError(f"layers: expected one of {', '.join(LAYERS)}, got {layers!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SeedCNN(**config)
    return convert(model, backend=backend) if layers == "lepton" else model


# ---- data -------------------------------------------------------------------------------
@dataclass
class Split:
    """Images (N, C, S, S) float32 and integer labels (N,)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Data:
    """Both splits, standardised by the training split's mean and std (kept here and in
    a saved model, to prepare new images the same way)."""

    train: Split
    test: Split
    classes: list[str] = field(default_factory=list)
    source: str = ""
    mean: float = 0.0
    std: float = 1.0


def _standardised(train: Split, test: Split, classes, source) -> Data:
    mean, std = float(train.x.mean()), float(train.x.std(correction=0)) or 1.0
    norm = lambda s: Split((s.x - mean) / std, s.y)  # noqa: E731
    return Data(norm(train), norm(test), list(classes), source, mean, std)


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return TF.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=x.shape[-1] > size).clamp_(0.0, 1.0)


def load_digits(input_size: int = INPUT_SIZE, *, test_fraction: float = 0.2,
                seed: int = 0) -> Data:
    """scikit-learn's digits, stratified into a held-out test split, upsampled bilinearly."""
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    d = sk_digits()
    images = torch.from_numpy((d.images / 16.0).astype(np.float32)).unsqueeze(1)
    labels = torch.from_numpy(d.target.astype(np.int64))
    idx_train, idx_test = train_test_split(np.arange(len(labels)), test_size=test_fraction,
                                           stratify=d.target, random_state=seed)
    x = _resize(images, input_size)
    return _standardised(Split(x[idx_train], labels[idx_train]),
                         Split(x[idx_test], labels[idx_test]), [str(c) for c in range(10)],
                         "sklearn digits")


def _label_of(filename: str) -> str:
    parts = filename.split(".")
    if len(parts) < 3 or not parts[0] or not parts[1]:
        raise ValueError(f"data: image {filename!r} is not named <label>.<n>.<ext>")
    return parts[0]


def _read_folder(folder: str, input_size: int, channels: int):
    from PIL import Image

    names = sorted(n for n in os.listdir(folder) if not n.startswith("."))
    if not names:
        raise ValueError(f"data: {folder} has no images")
    mode = {1: "L", 3: "RGB"}[channels]
    images, labels = [], []
    for name in names:
        label = _label_of(name)
        with Image.open(os.path.join(folder, name)) as im:
            im = im.convert(mode).resize((input_size, input_size), Image.BILINEAR)
            a = np.asarray(im, np.float32) / 255.0
        images.append(a[None] if channels == 1 else a.transpose(2, 0, 1))
        labels.append(label)
    return np.stack(images), labels


def load_folder(root: str, input_size: int = INPUT_SIZE, *, channels: int = 1) -> Data:
    """The seed's layout: ``root/train`` and ``root/test``, images named
    ``<label>.<n>.<ext>``; labels are sorted by name into class indices (integer labels
    by value)."""
    if channels not in (1, 3):
        raise ValueError(f"channels: expected 1 (grayscale) or 3 (RGB), got {channels!r}")
    for part in ("train", "test"):
        if not os.path.isdir(os.path.join(root, part)):
            raise ValueError(f"data: {root} has no {part}/ folder (expected {root}/train and "
                             f"{root}/test of <label>.<n>.<ext> images)")
    xtr, ltr = _read_folder(os.path.join(root, "train"), input_size, channels)
    xte, lte = _read_folder(os.path.join(root, "test"), input_size, channels)
    names = set(ltr) | set(lte)
    classes = sorted(names, key=lambda s: (0, int(s), s) if s.isdigit() else (1, 0, s))
    index = {c: i for i, c in enumerate(classes)}
    as_split = lambda x, ls: Split(torch.from_numpy(x), torch.tensor([index[c] for c in ls]))  # noqa: E731
    return _standardised(as_split(xtr, ltr), as_split(xte, lte), classes, root)


def load_data(data: str = "digits", input_size: int = INPUT_SIZE, *, channels: int = 1,
              seed: int = 0) -> Data:
    """``"digits"`` or a folder in the seed's layout."""
    if data == "digits":
        return load_digits(input_size, seed=seed)
    if not isinstance(data, str) or not os.path.isdir(data):
        raise ValueError(f"data: expected 'digits' or a folder with train/ and test/, got "
                         f"{data!r}")
    return load_folder(data, input_size, channels=channels)


def batches(n: int, batch_size: int, generator: torch.Generator):
    """Index batches of one shuffled epoch (the last one may be short)."""
    order = torch.randperm(n, generator=generator)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


# ---- training -----------------------------------------------------------------------------
def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Categorical cross-entropy of the softmax of ``logits`` (one stable PyTorch op)."""
    return TF.cross_entropy(logits, labels)


@torch.no_grad()
def evaluate(model: torch.nn.Module, split: Split, batch_size: int = 256) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of the model on a split."""
    was = model.training
    model.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(split), batch_size):
        logits = model(split.x[i:i + batch_size])
        y = split.y[i:i + batch_size]
        loss += float(TF.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
    model.train(was)
    return loss / max(len(split), 1), correct / max(len(split), 1)


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Class probabilities (the seed's softmax output)."""
    was = model.training
    model.eval()
    p = torch.softmax(model(x), dim=1)
    model.train(was)
    return p


def save_model(model: SeedCNN, path: str, data: Data | None = None) -> None:
    """The state_dict, the model's configuration and the data's classes and scaling."""
    extra = {} if data is None else {"classes": list(data.classes),
                                     "normalize": [data.mean, data.std]}
    torch.save({"state_dict": model.state_dict(), "config": dict(model.config), **extra}, path)


def load_model(path: str, layers: str = "lepton", backend: str = "auto") -> SeedCNN:
    """A saved SeedCNN, on our layers or PyTorch's (the state_dict is the same)."""
    blob = torch.load(path, weights_only=True)
    model = build_model(layers, backend=backend, **blob["config"])
    model.load_state_dict(blob["state_dict"])
    model.classes = blob.get("classes", [])
    model.normalize = tuple(blob.get("normalize", (0.0, 1.0)))
    return model


def plot_curves(history: dict, path: str) -> None:
    """Loss and accuracy per epoch (train and test) and the per-step loss, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [e["epoch"] for e in history["epochs"]]
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(10, 4))
    steps = np.arange(1, len(history["step_loss"]) + 1) / max(history["steps_per_epoch"], 1)
    ax_l.plot(steps, history["step_loss"], color="0.75", lw=0.8, label="train (per step)")
    ax_l.plot(epochs, [e["loss"] for e in history["epochs"]], "o-", label="train")
    ax_l.plot(epochs, [e["test_loss"] for e in history["epochs"]], "s-", label="test")
    ax_l.set(xlabel="epoch", ylabel="cross-entropy", title="loss", yscale="log")
    ax_a.plot(epochs, [100 * e["accuracy"] for e in history["epochs"]], "o-", label="train")
    ax_a.plot(epochs, [100 * e["test_accuracy"] for e in history["epochs"]], "s-", label="test")
    ax_a.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_l, ax_a):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"SeedCNN on {history['data']} ({history['layers']} layers): test accuracy "
                 f"{100 * history['test_accuracy']:.2f} %")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _progress(enabled: bool):
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn)

    return Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.4f}  acc {task.fields[acc]:.2%}  "
                               "{task.fields[test]}"),
                    TimeElapsedColumn(), disable=not enabled)


def fit(data: str = "digits", *, epochs: int = 20, batch_size: int = 32, lr: float = 3e-3,
          input_size: int = INPUT_SIZE, channels: int = 1, layers: str = "lepton",
          backend: str = "auto", seed: int = 0, out: str | None = None,
          max_steps: int | None = None, progress: bool = True, threads: int | None = 1,
          optimizer: str = "adam", model: SeedCNN | None = None,
          dataset: Data | None = None):
    """Train the seed's CNN: returns ``(the trained model, its metrics)``.

    ``out``: the saved model's path (``.pt``); the curves go next to it (``.png``) and the
    metrics too (``.json``). ``max_steps`` stops early (the step losses are in the result
    either way). ``model``/``dataset`` replace the ones built from ``seed``/``data``.
    ``threads``: PyTorch's and the BLAS's threads for the run (None: leave both as set).
    One by default: this network's layers are too small to gain from more, and our
    kernels' BLAS pool and PyTorch's pool spinning side by side cost far more (on a
    2-core machine a step took 9 ms on one thread each, 330 ms on two each).
    """
    for name, v in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: expected a positive int, got {v!r}")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr: expected a positive number, got {lr!r}")
    if optimizer != "adam":
        raise ValueError(f"optimizer: the seed's CNN trains with 'adam', got {optimizer!r}")
    with limit_threads(threads):
        return _fit(data, epochs, batch_size, lr, input_size, channels, layers, backend, seed,
                    out, max_steps, progress, model, dataset)


@contextlib.contextmanager
def limit_threads(threads: int | None):
    """PyTorch's and the BLAS's thread counts for the run (restored after). Our CPU kernels
    use the BLAS's pool and PyTorch's ops its own; on few cores the two pools' idle-spinning
    threads slow each other down, so a small count for both is often the faster choice."""
    if threads is None:
        yield
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads: expected a positive int, got {threads!r}")
    from threadpoolctl import threadpool_limits

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(old)


def _fit(data, epochs, batch_size, lr, input_size, channels, layers, backend, seed, out,
         max_steps, progress, model, dataset):
    ds = dataset or load_data(data, input_size, channels=channels, seed=seed)
    net = model or build_model(layers, seed=seed, backend=backend, input_size=input_size,
                               channels=channels, num_classes=len(ds.classes))
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    history = {"data": ds.source or str(data), "layers": layers, "epochs": [],
               "step_loss": [], "steps_per_epoch": math.ceil(len(ds.train) / batch_size)}
    step, t_start = 0, time.perf_counter()
    net.train()
    with _progress(progress) as bar:
        for epoch in range(1, epochs + 1):
            order = batches(len(ds.train), batch_size, gen)
            task = bar.add_task("", total=len(order), epoch=f"{epoch}/{epochs}", loss=0.0,
                                acc=0.0, test="")
            t0, seen, correct, total_loss = time.perf_counter(), 0, 0, 0.0
            for idx in order:
                xb, yb = ds.train.x[idx], ds.train.y[idx]
                logits = net(xb)
                loss = loss_fn(logits, yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                value = loss.item()
                history["step_loss"].append(value)
                seen += len(yb)
                total_loss += value * len(yb)
                correct += int((logits.detach().argmax(1) == yb).sum())
                bar.update(task, advance=1, loss=total_loss / seen, acc=correct / seen)
                if max_steps is not None and step >= max_steps:
                    break
            test_loss, test_acc = evaluate(net, ds.test)
            history["epochs"].append({"epoch": epoch, "loss": total_loss / seen,
                                      "accuracy": correct / seen, "test_loss": test_loss,
                                      "test_accuracy": test_acc,
                                      "seconds": time.perf_counter() - t0})
            bar.update(task, test=f"test {test_acc:.2%}")
            if max_steps is not None and step >= max_steps:
                break
    history.update(steps=step, seconds=time.perf_counter() - t_start,
                   test_loss=history["epochs"][-1]["test_loss"],
                   test_accuracy=history["epochs"][-1]["test_accuracy"], classes=ds.classes,
                   config=dict(getattr(net, "config", {}), epochs=epochs, batch_size=batch_size, lr=lr,
                               seed=seed, backend=backend))
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        save_model(net, out, ds)
        stem = os.path.splitext(out)[0]
        plot_curves(history, stem + ".png")
        with open(stem + ".json", "w") as f:
            json.dump(history, f, indent=1)
        history.update(model_path=out, curves_png=stem + ".png", metrics_json=stem + ".json")
    return net, history


def train(data: str = "digits", **kwargs) -> dict:
    """The training entry point: :func:`fit`'s keyword arguments, its metrics (JSON-able)
    back; the trained model is saved at ``out`` when given."""
    return fit(data, **kwargs)[1]


__all__ = ["SeedCNN", "build_model", "load_digits", "load_folder", "load_data", "Data", "Split",
           "train", "fit", "evaluate", "predict", "save_model", "load_model", "plot_curves",
           "limit_threads", "loss_fn"]
