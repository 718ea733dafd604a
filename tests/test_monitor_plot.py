"""`lepton-accel explain --plot`: the time-versus-cost scatter shows every candidate with
an estimate, marks the chosen type, and shows types the deadline rules out as such."""
import math

import pytest

pytest.importorskip("matplotlib")

from lepton_accel.scheduler.catalog import load_catalog  # noqa: E402
from lepton_accel.scheduler.cli import plot_placements  # noqa: E402
from lepton_accel.scheduler.jobs import parse_workload  # noqa: E402
from lepton_accel.scheduler.placement import place  # noqa: E402

CAT = load_catalog(use_env=False)


def test_plot_marks_the_chosen_type_and_the_ruled_out(tmp_path):
    import matplotlib.image

    jobs = parse_workload({"jobs": [
        {"name": "gemm", "op": "matmul", "a": {"shape": [301, 257], "dtype": "float32"},
         "b": {"shape": [257, 131], "dtype": "float32"}},
        # a deadline that new GPU nodes (60 s start-up) miss and CPU nodes (40 s) meet
        {"name": "due", "op": "matmul", "a": {"shape": [64, 64], "dtype": "float16"},
         "b": {"shape": [64, 64], "dtype": "float16"}, "deadline_s": 50},
        {"name": "suite", "suite": {"name": "shell", "command": "true"}, "estimate_s": 5,
         "constraints": {"kind": "gpu"}},
    ]}, catalog=CAT)
    ps = [place(j, CAT) for j in jobs]
    out = tmp_path / "explain.png"
    shown = plot_placements(ps, out)
    img = matplotlib.image.imread(out)
    assert img.shape[0] > 400 and img.shape[1] > 1000 and img[..., :3].std() > 0.05   # two rows, not blank
    assert [name for name, _ in shown] == ["gemm", "due", "suite"]
    for p, (_, points) in zip(ps, shown):
        chosen = [pt for pt in points if pt[3] == "chosen"]
        assert chosen == [(p.winner.itype.name, p.winner.time_s, p.winner.cost, "chosen")]
        with_estimate = {c.itype.name for c in p.candidates if math.isfinite(c.time_s) and math.isfinite(c.cost)}
        assert {pt[0] for pt in points} == with_estimate
        for name, _t, _c, role in points:
            c = next(c for c in p.candidates if c.itype.name == name)
            assert role == ("chosen" if c is p.winner else "feasible" if c.feasible else "ruled out")
    due = dict((pt[0], pt[3]) for pt in shown[1][1])
    assert due["g6.xlarge"] == "ruled out" and due["c7i.large"] in ("chosen", "feasible")
    assert {pt[0] for pt in shown[2][1]} <= {t.name for t in CAT if t.kind == "gpu"}


def test_explain_command_writes_the_png(tmp_path, capsys):
    from lepton_accel.scheduler.cli import main

    job = tmp_path / "job.yaml"
    job.write_text("name: mm\nop: matmul\na: {shape: [40, 30], dtype: int8}\nb: {shape: [30, 20], dtype: int8}\n")
    out = tmp_path / "x.png"
    assert main(["explain", str(job), "--plot", str(out)]) == 0
    cap = capsys.readouterr()
    assert "<- chosen" in cap.out and f"wrote {out}" in cap.err
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
