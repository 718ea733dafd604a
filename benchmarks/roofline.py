"""A roofline picture of a pytest-benchmark run: each benchmark's achieved FLOP/s against its
arithmetic intensity (FLOPs per byte moved, from its op's spec), ours and the peer's, under
this machine's compute peak and memory bandwidth as the perf model describes them.

    pytest benchmarks/bench_cpu.py --benchmark-only --benchmark-json=run.json
    python benchmarks/roofline.py run.json roofline.png          # or: lepton-accel bench --plot roofline.png
"""
from __future__ import annotations

import json
import sys


def points(data: dict) -> list[dict]:
    """(name, impl, intensity, flop/s) of every benchmark that recorded its cost terms."""
    out = []
    for b in data["benchmarks"]:
        extra = b.get("extra_info", {})
        if not extra.get("flops") or not extra.get("bytes"):
            continue
        out.append({"group": b.get("group") or b["name"], "impl": b["params"].get("impl", "?"),
                    "intensity": extra["flops"] / extra["bytes"],
                    "flops_per_s": extra["flops"] / b["stats"]["median"]})
    return out


def plot(data: dict, path: str, device: str = "host-cpu") -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from lepton_accel.perf import DEVICES

    pts = points(data)
    if not pts:
        raise SystemExit("roofline: the run has no benchmark with flops/bytes in extra_info")
    dev = DEVICES[device]
    peak, bw = dev.peak["float32"], dev.memory_bw
    lo = min(p["intensity"] for p in pts) / 2
    hi = max(p["intensity"] for p in pts) * 2
    x = np.logspace(np.log10(lo), np.log10(hi), 200)
    fig, ax = plt.subplots(figsize=(8, 5.5))
    ax.loglog(x, np.minimum(peak, bw * x), color="black", lw=1.5,
              label=f"{device} roof: {peak / 1e9:.0f} GFLOP/s float32 peak, "
                    f"{bw / 1e9:.0f} GB/s memory")
    marker = {"lepton": ("o", "tab:blue", "lepton_accel"), "numpy": ("s", "tab:orange", "NumPy"),
              "torch": ("^", "tab:green", "PyTorch")}
    seen = set()
    for p in pts:
        m, c, label = marker.get(p["impl"], ("x", "tab:gray", p["impl"]))
        ax.scatter(p["intensity"], p["flops_per_s"], marker=m, color=c, s=40, zorder=3,
                   label=None if label in seen else label)
        seen.add(label)
        if p["impl"] == "lepton":
            ax.annotate(p["group"].replace("conv2d f32 ", "").replace("depthwise ", "dw "),
                        (p["intensity"], p["flops_per_s"]), fontsize=7, xytext=(4, -9),
                        textcoords="offset points")
    ax.set_xlabel("arithmetic intensity (FLOP per byte of operands and result)")
    ax.set_ylabel("achieved FLOP/s (median)")
    ax.set_title("Roofline: lepton_accel's CPU backend and the peers, same run")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return len(pts)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1]) as f:
        n = plot(json.load(f), argv[2])
    print(f"roofline: {n} points written to {argv[2]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
