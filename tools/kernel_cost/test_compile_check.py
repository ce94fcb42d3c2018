"""The compile-level checks of the kernels: the real sm_90a binaries of every planned variant.

Triton's interpreter accepts what the GPU compiler may reject (dot shapes,
layouts) or spill, so this builds, in a fresh process without the
interpreter, the binaries of every launch the plans make at D = M = 64 (every
mode, both weight-gradient paths, the no-grad forward, every = 1), and the
cost model's estimate of the headline step. It needs Triton's NVIDIA backend
(bundled ptxas), not a GPU.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest


def _has_bundled_ptxas() -> bool:
    if importlib.util.find_spec("triton") is None:
        return False
    import triton

    return os.path.exists(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin"))


def _compile_report(*args):
    """Run the compile check in a fresh process without the interpreter; its JSON report."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-m", "tools.kernel_cost.compile_check", "--json", "-", *args],
                         capture_output=True, text=True, env=env, timeout=900, cwd=root)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not _has_bundled_ptxas(), reason="needs Triton's NVIDIA backend")
def test_compile_check_compiles_every_planned_variant_for_hopper():
    report = _compile_report("--quick", "--cost")
    variants = report["variants"]
    kernels = {record["kernel"] for record in variants}
    assert kernels == {"stack_forward", "stack_backward", "weight_grad"}
    modes = {record["variant"].split("W_MODE=")[1].split(",")[0] for record in variants
             if record["kernel"] == "stack_backward"}
    assert modes == {"gemm", "store", "none"}
    for record in variants:
        assert record["regs"] <= 255 and record["spill_bytes"] == 0 and record["launchable"], record
        assert record["sass_per_layer"] > 0, record
        assert all(waits == 0 for waits in record["exposed_waits"].values()), record
    (step,) = report["step_estimates"]
    assert step["precision"] == step["default_precision"] == "tf32x3"
    assert step["est_forward_ms"] > 0 and step["est_backward_ms"] > 0
    assert "no GPU measured" in report["note"]


def test_stored_report_matches_the_plans_vocabulary():
    # The stored report's records use the names the plans and a new run use (same keys, same meaning).
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(root, "bench", "results", "compile_check_sm90.json"), encoding="utf-8") as handle:
        report = json.load(handle)
    from deepres.kernels.plan import DTYPES, PRECISIONS

    assert set(report) == {"arch", "note", "variants", "hardware", "step_estimates"}
    for record in report["variants"]:
        assert record["precision"] in PRECISIONS and record["weight_dtype"] in DTYPES
        assert "EXACT_WEIGHTS" not in record["variant"]
    for step in report["step_estimates"]:
        assert step["checkpoint_every"] in ("sqrt", None) and step["default_precision"] == "tf32x3"
