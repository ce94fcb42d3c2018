"""Tests of bench/gpu_check.py on the CPU: its --dry-run, its report, and how it survives faults.

No test here measures a GPU; the script's own GPU run is ``python -m bench.gpu_check``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import gpu_check

ROOT = Path(__file__).resolve().parent.parent


def _run_gpu_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.gpu_check", *args], cwd=ROOT, capture_output=True,
                          text=True, env=dict(os.environ), timeout=600)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without CUDA")
def test_without_cuda_exits_2_and_says_why(tmp_path):
    run = _run_gpu_check("--out", str(tmp_path / "out.json"))
    assert run.returncode == 2
    assert "needs a CUDA device" in run.stderr
    assert not (tmp_path / "out.json").exists()


def test_default_budget_is_at_most_300_seconds():
    assert gpu_check._parse([]).budget <= 300
    assert gpu_check._parse(["--quick"]).budget <= 300


@pytest.mark.slow
def test_dry_run_writes_a_complete_report(tmp_path):
    out = tmp_path / "check.json"
    run = _run_gpu_check("--dry-run", "--out", str(out))
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["errors"] == []
    assert report["all_correctness_passed"] is True
    # The environment and the ceilings are those of `deepres bench`.
    env = report["environment"]
    assert {"device", "device_name", "versions", "git_commit", "command", "cuda", "dry_run"} <= set(env)
    assert env["versions"]["torch"] == torch.__version__ and "--dry-run" in env["command"]
    assert {"copy_gbytes_per_s", "matmul_tflops"} <= set(report["ceilings"])
    providers = {row["provider"] for row in report["timing"]}
    assert providers == {"deepres-triton", "deepres-triton-sqrt", "deepres-torch", "eager"}
    for row in report["timing"]:
        assert row["median_ms"] > 0 and row["repeats"] >= 3 and row["model_TFLOPs"] > 0
    assert {(s["L"], s["pass"]) for s in report["speedups"]} == {
        (L, p) for L in (4, 8) for p in ("forward", "forward+backward")}
    for entry in report["speedups"]:
        assert entry["best"]["policy"] in ("none", "sqrt") and entry["sqrt"]["ms"] >= entry["best"]["ms"]


def test_speedups_report_sqrt_alone_and_the_best_policy():
    def row(provider, ms, L=64):
        return {"provider": provider, "pass": "forward+backward", "L": L, "D": 8, "B": 4, "median_ms": ms}

    rows = [row("deepres-triton", 2.0), row("deepres-triton-sqrt", 4.0), row("eager", 40.0),
            row("compile-reduce-overhead", 10.0), row("deepres-triton-sqrt", 5.0, L=32), row("eager", 20.0, L=32)]
    by_depth = {entry["L"]: entry for entry in gpu_check._speedups(rows)}
    assert by_depth[64]["best"] == {"policy": "none", "ms": 2.0, "vs_eager": 20.0, "vs_compiled": 5.0,
                                    "vs_torch_engine": None}
    assert by_depth[64]["sqrt"] == {"ms": 4.0, "vs_eager": 10.0, "vs_compiled": 2.5, "vs_torch_engine": None}
    assert by_depth[32]["best"]["policy"] == "sqrt" and by_depth[32]["sqrt"]["vs_eager"] == 4.0


def _fast_dry_run(monkeypatch):
    """A dry run without the Triton interpreter: the PyTorch engine and eager only, no correctness cases."""
    monkeypatch.setattr(gpu_check, "_correctness_cases", lambda dry_run: [])
    original = gpu_check._providers
    monkeypatch.setattr(gpu_check, "_providers",
                        lambda run: [p for p in original(run) if p.name in ("deepres-torch", "eager")])


def test_a_crash_partway_leaves_every_finished_case_on_disk(tmp_path, monkeypatch):
    _fast_dry_run(monkeypatch)
    finished = []
    original = gpu_check._time_pass

    def crashing(*args):
        if len(finished) == 3:
            raise KeyboardInterrupt  # no guard catches it: the process would end here
        finished.append(original(*args))
        return finished[-1]

    monkeypatch.setattr(gpu_check, "_time_pass", crashing)
    out = tmp_path / "check.json"
    with pytest.raises(KeyboardInterrupt):
        gpu_check.main(["--dry-run", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["timing"] == json.loads(json.dumps(finished))
    assert report["ceilings"]["copy_gbytes_per_s"] > 0
    assert len(report["speedups"]) == 0  # no Triton timing in this run


def test_a_sticky_device_error_skips_the_rest_and_keeps_the_report(tmp_path, monkeypatch):
    _fast_dry_run(monkeypatch)
    calls = []
    original = gpu_check._time_pass

    def faulting(*args):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return original(*args)

    def unusable(self):  # what torch.cuda.synchronize() does after a sticky fault
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(gpu_check, "_time_pass", faulting)
    monkeypatch.setattr(gpu_check.Run, "check_device", unusable)
    out = tmp_path / "check.json"
    gpu_check.main(["--dry-run", "--out", str(out)])
    report = json.loads(out.read_text())
    assert len(calls) == 2 and len(report["timing"]) == 1
    assert len(report["errors"]) == 1 and "illegal memory access" in report["errors"][0]["error"]
    assert "unusable" in report["device_unusable"]
    # Every later timing pass is listed as skipped, with the reason.
    later = [s for s in report["skipped"] if s["why"] == report["device_unusable"]]
    assert len(later) == 2 * 2 * 2 - 2  # 2 depths x 2 providers x 2 passes, less the two that ran
    assert math.isfinite(report["elapsed_s"])
