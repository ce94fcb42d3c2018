"""The learning-rate-transfer example: a tiny run writes its JSON, CSV and figure; bad options fail
with one line and status 2 before any work."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _example():
    spec = importlib.util.spec_from_file_location("lr_transfer", ROOT / "examples" / "lr_transfer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_tiny_run_writes_results_and_picks_the_best_lr(tmp_path, capsys):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    example = _example()
    status = example.main(["--depths", "2", "4", "--parameterizations", "mlu", "standard",
                           "--lr-exponents", "mlu=-2:-1", "standard=-7:-6", "--steps", "3", "--seeds", "2",
                           "--batch", "32", "--dim", "4", "--hidden", "2", "--out", str(tmp_path),
                           "--no-progress"])
    assert status == 0
    report = json.loads((tmp_path / "lr_transfer.json").read_text())
    assert report["config"]["lr_exponents"] == {"mlu": [-2, -1], "standard": [-7, -6]}
    assert report["config"]["data"] == {"name": "sklearn.datasets.load_digits", "train": 1438, "test": 359}
    assert len(report["runs"]) == 2 * 2 * 2
    for run in report["runs"]:
        assert len(run["train_loss"]) == 2 and len(run["test_accuracy"]) == 2
        assert all(math.isfinite(v) and v > 0 for v in run["train_loss"])
    for name in ("mlu", "standard"):
        for depth in ("2", "4"):
            best = report["best"][name][depth]
            runs = [r for r in report["runs"] if r["parameterization"] == name and str(r["depth"]) == depth]
            assert best["mean_train_loss"] == min(r["mean_train_loss"] for r in runs)
            assert best["lr"] == 2.0 ** best["log2_lr"]
    with open(tmp_path / "lr_transfer.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 8 * 2
    assert (tmp_path / "lr_transfer.png").stat().st_size > 0
    assert "best η per depth" in capsys.readouterr().out


def test_runs_share_the_data_order_and_the_initialization():
    """Common random numbers: the minibatches are the same list for every run, and one seed."""
    example = _example()
    first = example.minibatches(100, 32, 7, seed=3)
    assert [b.tolist() for b in first] == [b.tolist() for b in example.minibatches(100, 32, 7, seed=3)]
    assert all(len(b) == 32 for b in first) and len(first) == 7
    first_epoch = [i for b in first[:3] for i in b.tolist()]      # 3 batches of 32 ≤ 100: no repeats
    assert len(set(first_epoch)) == len(first_epoch)


@pytest.mark.parametrize("argv, message", [
    (["--depths", "0"], "--depths must be ≥ 1"),
    (["--steps", "0"], "--steps must be ≥ 1"),
    (["--parameterizations", "ntk"], "--parameterizations must be among"),
    (["--lr-exponents", "mlu=3:1"], "--lr-exponents must be [NAME=]LO:HI"),
    (["--lr-exponents", "mlu=a:b"], "--lr-exponents must be [NAME=]LO:HI"),
    (["--parameterizations", "depth_mup", "--lr-exponents", "mlu=1:2"], "no grid for 'depth_mup'"),
    (["--alpha", "-1"], "--alpha must be finite and > 0"),
    (["--weight-decay", "nan"], "--weight-decay must be finite"),
    (["--device", "nonsense"], "--device must be a torch device"),
])
def test_bad_options_fail_with_one_line_and_status_2(argv, message, capsys, tmp_path):
    status = _example().main([*argv, "--out", str(tmp_path / "never")])
    err = capsys.readouterr().err
    assert status == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "never").exists()
