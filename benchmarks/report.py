"""Turn a pytest-benchmark JSON file into a markdown table of medians and ratios.

Each benchmark group holds our implementation ("lepton" in the test id) and the peer a
user would call instead; the ratio is peer median / our median (above 1: we are faster).

    pytest benchmarks/bench_cpu.py --benchmark-only --benchmark-json=run.json
    python benchmarks/report.py run.json "pytest benchmarks/bench_cpu.py ..." > results/cpu.md
"""
from __future__ import annotations

import json
import platform
import subprocess
import sys
from collections import defaultdict


def _fmt(seconds: float) -> str:
    for unit, scale in (("s", 1), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds * 1e9:.3g} ns"


def render(data: dict, command: str) -> str:
    groups: dict[str, dict[str, float]] = defaultdict(dict)
    for b in data["benchmarks"]:
        impl = b["params"].get("impl", b["name"])
        groups[b["group"] or b["name"]][impl] = b["stats"]["median"]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = "unknown"
    info = data.get("machine_info", {})
    lines = [
        f"- date: {data.get('datetime', '')}",
        f"- machine: {info.get('cpu', {}).get('brand_raw', platform.processor())}, "
        f"{info.get('cpu', {}).get('count', '?')} cores, {platform.system()}",
        f"- commit: {commit}",
        f"- command: `{command}`",
        "",
        "| benchmark | ours (median) | peer | peer (median) | peer / ours |",
        "|---|---|---|---|---|",
    ]
    for group, impls in groups.items():
        ours = impls.get("lepton")
        for peer, t in impls.items():
            if peer == "lepton":
                continue
            ratio = f"{t / ours:.2f}" if ours else "-"
            lines.append(f"| {group} | {_fmt(ours) if ours else '-'} | {peer} | {_fmt(t)} | {ratio} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        print(render(json.load(f), sys.argv[2] if len(sys.argv) > 2 else ""))
