"""Study sweeps through Ray: same numbers as the local executor, retries, failures, interruption."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray")

from deepres.study import cli  # noqa: E402
from deepres.study.convergence.presets import StudyConfig  # noqa: E402
from deepres.study.shared.ray_executor import RayExecutor, require_ray  # noqa: E402
from deepres.study.shared.store import ResultStore  # noqa: E402

TINY_ARGS = ["--depths", "2,4", "--widths", "1,2", "--replicas", "4", "--particles", "32", "--grid-steps", "4",
             "--limit-sets", "2", "--steps", "2", "--records", "2", "--lazy-alphas", "1,2", "--lazy-depth",
             "2", "--lazy-hidden", "2", "--lazy-replicas", "2", "--bootstrap", "20", "--samples", "6",
             "--no-progress", "--no-plots"]
# Enough work that an interruption lands mid-sweep. Units run cheapest first and the signal goes
# out when the first is stored (a few milliseconds in), so the window is the rest of the sweep:
# 4.9 s of units on the 2-core CPU with the C++ engine at 200 steps (at 10 steps it was 0.5 s, and
# a Ray sweep then often ended before the signal arrived).
SLOW_ARGS = ["--depths", "8,16,32,64,128", "--widths", "2,4", "--replicas", "8", "--particles", "256",
             "--grid-steps", "8", "--limit-sets", "2", "--steps", "200", "--records", "2", "--lazy-alphas", "",
             "--bootstrap", "20", "--no-progress", "--no-plots"]


@pytest.fixture(scope="module")
def cluster():
    """One local Ray instance for the module (starting one takes several seconds)."""
    executor = RayExecutor(num_cpus=2)
    yield ray.get_runtime_context().gcs_address
    executor.close()


def _study(args: list[str]) -> int:
    parser = argparse.ArgumentParser()
    cli.configure_parser(parser)
    return cli.main(parser.parse_args(args))


def _numbers(report: dict) -> dict:
    """The measured part of a report (wall times and the environment differ between runs)."""
    drop = {"seconds"}
    clean = lambda rows: [{k: v for k, v in r.items() if k not in drop} for r in rows]
    return {"measurements": clean(report["measurements"]), "fits": report["fits"],
            "lazy_fits": report["lazy"]["fits"], "limits": clean(report["limits"])}


def test_ray_sweep_gives_the_local_numbers(cluster, tmp_path):
    assert _study(["--out", str(tmp_path / "local"), *TINY_ARGS]) == 0
    assert _study(["--out", str(tmp_path / "ray"), "--executor", "ray", *TINY_ARGS]) == 0
    local = json.loads((tmp_path / "local" / "study.json").read_text())
    remote = json.loads((tmp_path / "ray" / "study.json").read_text())
    assert remote["environment"]["executor"] == "RayExecutor"
    assert remote["units"]["ran"] == local["units"]["ran"] == local["units"]["total"]
    assert _numbers(remote) == _numbers(local)


def _work_that_dies(marker_dir: Path):
    def work(unit):
        marker = marker_dir / f"{unit['i']}.tried"
        if unit["die"] == "always" or (unit["die"] == "once" and not marker.exists()):
            marker.touch()
            os._exit(1)  # the worker process dies, as if killed
        return {"value": torch.tensor(float(unit["i"]))}
    return work


def test_dead_worker_is_retried_then_reported_failed(cluster, tmp_path):
    store = ResultStore(tmp_path / "out")
    units = [{"kind": "probe", "i": 0, "die": "never"}, {"kind": "probe", "i": 1, "die": "once"},
             {"kind": "probe", "i": 2, "die": "always"}]
    with RayExecutor(cluster, max_retries=1) as executor:
        executor.run(_work_that_dies(tmp_path), units, store.save, store.save_failure)
    assert store.load(units[0])["value"].item() == 0.0
    assert store.load(units[1])["value"].item() == 1.0  # died once, retried, finished
    assert not store.has(units[2])
    (failure,) = store.failures()
    assert failure["unit"] == units[2] and "gave up after 1 retries" in failure["error"]
    # A later success clears the failure record and leaves the other results as they were.
    store.save(units[2], {"value": torch.tensor(2.0)})
    assert store.failures() == [] and store.load(units[0])["value"].item() == 0.0


def test_an_exception_in_a_unit_stops_the_sweep_with_that_exception(cluster, tmp_path):
    def work(unit):
        raise ValueError(f"bad unit {unit['i']}")

    with RayExecutor(cluster) as executor, pytest.raises(ValueError, match="bad unit 0"):
        executor.run(work, [{"kind": "probe", "i": 0}], lambda unit, result: None)


def _unit_files(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (out / "units").glob("*.pt")}


def _start_and_interrupt(out: Path, extra: list[str], sig: int) -> tuple[dict[str, int], int, str]:
    """Start the study in a subprocess, send ``sig`` once a unit is stored; return the files, the
    status and what the process printed."""
    command = [sys.executable, "-m", "deepres.study", "--out", str(out), *SLOW_ARGS, *extra]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not _unit_files(out) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(sig)
    output, _ = process.communicate(timeout=60)
    return _unit_files(out), process.returncode if process.returncode is not None else -1, output.decode()


def _assert_resumes(out: Path, before: dict[str, int], extra: list[str]) -> None:
    total = len(StudyConfig(**{"depths": [8, 16, 32, 64, 128], "widths": [2, 4], "lazy_alphas": []}).units())
    assert 0 < len(before) < total, "the interruption should land mid-sweep"
    assert _study(["--out", str(out), *SLOW_ARGS, *extra]) == 0
    report = json.loads((out / "study.json").read_text())
    assert report["units"] == {"total": total, "resumed": len(before), "ran": total - len(before), "failed": 0}
    after = _unit_files(out)
    assert all(after[name] == stamp for name, stamp in before.items())  # nothing finished was redone


def test_killed_local_sweep_resumes_under_ray(cluster, tmp_path):
    before, status, output = _start_and_interrupt(tmp_path, [], signal.SIGKILL)
    assert status == -signal.SIGKILL, output
    _assert_resumes(tmp_path, before, ["--executor", "ray", "--address", cluster])


def test_ctrl_c_stops_a_ray_sweep_cleanly_and_a_rerun_resumes(cluster, tmp_path):
    before, status, output = _start_and_interrupt(tmp_path, ["--executor", "ray", "--address", cluster],
                                                  signal.SIGINT)
    assert status == 130, output
    _assert_resumes(tmp_path, before, [])


def test_missing_ray_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray → ImportError
    with pytest.raises(ImportError, match=r"pip install 'deepres\[ray\]'"):
        require_ray()
