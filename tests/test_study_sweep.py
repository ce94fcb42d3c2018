"""Sweeps: the results store is atomic, an interrupted study resumes and ends identical to an
uninterrupted one, and a whole tiny study runs through the command-line entry point."""

from __future__ import annotations

import argparse
import csv
import json

import pytest
import torch

from deepres.study import cli
from deepres.study.convergence.presets import StudyConfig, preset
from deepres.study.convergence.run import run_study
from deepres.study.convergence.sweep import run_units
from deepres.study.shared.store import ResultStore, unit_key
from deepres.study.shared.sweep import LocalExecutor

TINY = {"depths": [2, 4], "widths": [1, 2], "replicas": 4, "particles": 32, "grid_steps": 4, "limit_sets": 2,
        "steps": [2], "records": 2, "lazy_alphas": [1.0, 2.0], "lazy_depth": 2, "lazy_hidden": 2,
        "lazy_replicas": 2, "bootstrap": 20, "samples": 6}


class _Killed(RuntimeError):
    pass


class _DiesAfter(LocalExecutor):
    """Runs ``count`` units, then dies in the middle of the next one (as a killed process would)."""

    def __init__(self, count: int) -> None:
        self.count = count

    def run(self, work, units, on_done, on_failed=None):
        for index, unit in enumerate(units):
            if index == self.count:
                raise _Killed("killed")
            on_done(unit, work(unit))


def test_store_writes_atomically_and_ignores_partial_files(tmp_path):
    store = ResultStore(tmp_path)
    unit = {"kind": "resnet", "depth": 3}
    assert not store.has(unit)
    # A temporary file left by a write that was killed is not a result.
    (store.units_dir / f".{unit_key(unit)}.abc.tmp").write_bytes(b"partial")
    assert not store.has(unit)
    store.save(unit, {"x": torch.arange(3.0)})
    assert store.has(unit) and store.load(unit)["x"].tolist() == [0.0, 1.0, 2.0]
    assert unit_key(unit) == unit_key(dict(reversed(unit.items())))
    with pytest.raises(FileNotFoundError):
        store.load({"kind": "resnet", "depth": 4})


def test_interrupted_sweep_resumes_to_the_same_results(tmp_path):
    config = StudyConfig(**TINY)
    units = config.units()
    with pytest.raises(_Killed):
        run_units(units, ResultStore(tmp_path / "a"), executor=_DiesAfter(5), progress=False)
    stored = list((tmp_path / "a" / "units").glob("*.pt"))
    assert len(stored) == 5
    before = {p.name: p.stat().st_mtime_ns for p in stored}
    counts = run_units(units, ResultStore(tmp_path / "a"), progress=False)
    assert counts == {"total": len(units), "resumed": 5, "ran": len(units) - 5, "failed": 0}
    # Nothing already written was rewritten.
    assert all((tmp_path / "a" / "units" / name).stat().st_mtime_ns == t for name, t in before.items())
    run_units(units, ResultStore(tmp_path / "b"), progress=False)
    a, b = ResultStore(tmp_path / "a"), ResultStore(tmp_path / "b")
    for unit in units:
        ra, rb = a.load(unit), b.load(unit)
        for key, value in ra.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, rb[key]), (unit["kind"], key)
    again = run_units(units, a, progress=False)
    assert again["ran"] == 0 and again["resumed"] == len(units)


def test_study_end_to_end_through_the_cli(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    cli.configure_parser(parser)
    args = parser.parse_args(["--preset", "quick", "--depths", "2,4", "--widths", "1,2", "--replicas", "4",
                              "--particles", "32", "--grid-steps", "4", "--limit-sets", "2", "--steps", "2",
                              "--records", "2", "--lazy-alphas", "1,2", "--lazy-depth", "2", "--lazy-hidden",
                              "2", "--lazy-replicas", "2", "--bootstrap", "20", "--samples", "6",
                              "--no-progress", "--out", str(tmp_path)])
    assert cli.main(args) == 0
    report = json.loads((tmp_path / "study.json").read_text())
    assert report["config"]["depths"] == [2, 4] and report["units"]["ran"] == len(StudyConfig(**TINY).units())
    assert {"torch", "deepres"} <= set(report["environment"]["versions"]) and "device" in report["environment"]
    names = {f["name"] for f in report["fits"]}
    assert {"fluctuation_vs_depth", "bias_vs_depth", "fluctuation_vs_width"} <= names
    assert len(report["lazy"]["points"]) == 2
    limit = report["limits"][0]["output"]
    assert len(limit["reference_error"]) == 2 and limit["reference_error"][0] == 0.0
    rows = list(csv.DictReader((tmp_path / "measurements.csv").read_text().splitlines()))
    assert len(rows) == 2 * 2 * 2 * 2  # (L, M) × steps × spaces
    for name in ("error_vs_depth.png", "error_vs_width.png", "bias_vs_depth.png", "alpha_sweep.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert "report:" in capsys.readouterr().out
    # Rerun: everything is read back.
    assert cli.main(args) == 0
    assert json.loads((tmp_path / "study.json").read_text())["units"]["resumed"] == report["units"]["total"]


def test_config_errors():
    with pytest.raises(ValueError, match="depths"):
        StudyConfig(depths=[])
    with pytest.raises(ValueError, match="even"):
        StudyConfig(replicas=5)
    with pytest.raises(ValueError, match="task"):
        StudyConfig(task="mnist")
    with pytest.raises(ValueError, match="preset"):
        preset("huge")
    parser = argparse.ArgumentParser()
    cli.configure_parser(parser)
    assert cli.main(parser.parse_args(["--replicas", "3", "--no-progress"])) == 2


def test_missing_matplotlib_names_the_extra(monkeypatch):
    import sys

    from deepres.study.shared.report import require_matplotlib

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"deepres\[plot\]"):
        require_matplotlib()


class _GivesUpOnLimits(LocalExecutor):
    """Reports every limit unit failed (as a worker that keeps dying would be), runs the rest."""

    def run(self, work, units, on_done, on_failed=None):
        for unit in units:
            if unit["kind"] == "limit":
                on_failed(unit, "gave up after 2 retries: WorkerCrashedError")
            else:
                on_done(unit, work(unit))


def test_failed_units_are_reported_and_a_rerun_retries_only_them(tmp_path):
    config = StudyConfig(**TINY)
    report = run_study(config, tmp_path, progress=False, plots=False, executor=_GivesUpOnLimits())
    limits = [u for u in config.units() if u["kind"] == "limit"]
    assert report["units"]["failed"] == len(limits) and "fits" not in report
    assert sorted(json.dumps(f["unit"], sort_keys=True) for f in report["failed_units"]) == sorted(
        json.dumps(u, sort_keys=True) for u in limits)
    assert json.loads((tmp_path / "study.json").read_text())["units"]["failed"] == len(limits)
    report = run_study(config, tmp_path, progress=False, plots=False)
    assert report["units"] == {"total": len(config.units()), "resumed": len(config.units()) - len(limits),
                               "ran": len(limits), "failed": 0}
    assert ResultStore(tmp_path).failures() == [] and report["fits"]
