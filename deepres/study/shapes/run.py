"""Run (or resume) the shapes study, analyze it and write its report: :func:`run_shapes`.

The command line around it is :mod:`deepres.study.shapes.cli`.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from deepres.benchmark.environment import load_average
from deepres.study.shapes.analysis import analyze_shapes
from deepres.study.shapes.config import ShapesConfig, shapes_unit_work
from deepres.study.shapes.measure import run_shapes_unit
from deepres.study.shapes.report import write_tables
from deepres.study.shared.environment import study_environment
from deepres.study.shared.files import OutputLock
from deepres.study.shared.outputs import provenance
from deepres.study.shared.report import write_json
from deepres.study.shared.store import ResultStore
from deepres.study.shared.sweep import Executor, LocalExecutor, run_units

__all__ = ["run_shapes"]

_PROG = "deepres study"


def run_shapes(config: ShapesConfig, out: str | Path, *, device: str = "cpu", backend: str = "auto",
               progress: bool = True, plots: bool = True, executor: Executor | None = None,
               estimate: bool = True, wait: bool = False, preset: str | None = "shapes",
               argv: list[str] | None = None) -> dict[str, Any]:
    """Run (or resume) the shapes study, analyze it and write its report to ``out``.

    Args:
        config: the study. out: output directory (locked for the run).
        device: Default ``"cpu"``. backend: stack backend (``step="engine"``). Default ``"auto"``.
            Both are part of every unit's key.
        progress: tqdm bar weighted by each unit's work. Default True. plots: write PNGs. Default True.
        executor: where the units run (:class:`deepres.study.shared.sweep.LocalExecutor` by default, or a
            :class:`deepres.study.shared.ray_executor.RayExecutor`).
        estimate: time a probe and print the predicted time first. Default True.
        wait: wait for another study holding ``out``'s lock. Default False: raise
            :class:`~deepres.study.shared.files.FolderLockedError`.
        preset, argv: the preset's name and the full command line, for ``provenance``
            (:func:`~deepres.study.shared.outputs.provenance`). Defaults ``"shapes"`` and
            the interpreter's ``sys.argv``.

    Returns:
        The report written to ``out/study.json``: ``provenance``, ``config``, ``environment``, ``units``,
        ``estimate``, ``wall_seconds`` and ``shapes`` (:func:`~deepres.study.shapes.analysis.analyze_shapes`);
        ``failed_units`` (and no analysis) when an executor gave up on units.
    """
    with OutputLock(out).held(wait=wait):
        return _run_locked(config, out, device=device, backend=backend, progress=progress, plots=plots,
                           executor=executor, estimate=estimate, preset=preset, argv=argv)


def _probe_rate(config: ShapesConfig, device: str, backend: str) -> tuple[float, float]:
    """Multiply-adds per second of this machine, timed on one mid-size probe unit (not stored)."""
    shape = (min(50, config.reference[0]), min(512, config.reference[1]), min(512, config.reference[2]))
    probe = config.point_unit(-1, shape) | {"replicas": 1}
    start = time.perf_counter()
    run_shapes_unit(probe, device=device, backend=backend)
    seconds = time.perf_counter() - start
    return shapes_unit_work(probe) / seconds, seconds


def _format_seconds(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def _gmadds(unit: dict[str, Any]) -> float:
    """A unit's work in 10⁹ multiply-adds: the order of the units (smallest first) and the bar's weight."""
    return shapes_unit_work(unit) / 1e9


def _run_locked(config: ShapesConfig, out: str | Path, *, device: str, backend: str, progress: bool,
                plots: bool, executor: Executor | None, estimate: bool, preset: str | None,
                argv: list[str] | None) -> dict[str, Any]:
    start = time.perf_counter()
    environment = study_environment(device) | {"executor": type(executor or LocalExecutor()).__name__}
    # The device type and the backend are part of every unit's key (see ResultStore).
    store = ResultStore(out, device=device, backend=backend)
    units = config.units()
    todo = [u for u in units if not store.has(u)]
    predicted, total_text = None, None
    if estimate and todo:
        rate, probe_seconds = _probe_rate(config, device, backend)
        seconds = sum(shapes_unit_work(u) for u in todo) / rate
        references = sum(shapes_unit_work(u) for u in todo if u["kind"] == "shapes_ref") / rate
        predicted = {"seconds": seconds, "reference_seconds": references, "rate_madds_per_s": rate,
                     "probe_seconds": probe_seconds}
        print(f"{_PROG} --preset shapes: {len(todo)} units to run ({len(units) - len(todo)} resumed), "
              f"estimated {_format_seconds(seconds)} on this machine with one worker "
              f"({_format_seconds(references)} of it the reference draws; {rate / 1e9:.1f}·10⁹ "
              f"multiply-adds/s timed on a {probe_seconds:.1f} s probe)", file=sys.stderr, flush=True)

        def total_text(gmadds: float) -> str:
            return _format_seconds(gmadds * 1e9 / rate)

    def work(unit: dict[str, Any]) -> dict[str, Any]:
        return run_shapes_unit(unit, device=device, backend=backend)

    ran_from = time.perf_counter()
    counts = run_units(units, store, work, cost=_gmadds, executor=executor, progress=progress, desc="shapes",
                       total_text=total_text)
    ran = time.perf_counter() - ran_from
    report: dict[str, Any] = {"provenance": provenance(preset, config.as_dict(), store.identity, argv=argv),
                              "config": config.as_dict(), "environment": environment,
                              "unit_identity": store.identity, "corrupt_files": store.corrupt,
                              "units": counts, "wall_seconds": {"run": ran}}
    if predicted is not None:
        report["estimate"] = predicted | {"measured_seconds": ran}
    else:
        # Everything was read back: keep the estimate and the wall time of the run that computed the units.
        previous = _previous(Path(out) / "study.json")
        if previous.get("estimate") is not None:
            report["estimate"] = previous["estimate"] | {"from_an_earlier_run": True}
        if previous.get("wall_seconds") is not None:
            report["wall_seconds"]["earlier_run"] = previous["wall_seconds"].get("earlier_run",
                                                                                previous["wall_seconds"])
    if counts["failed"]:
        report["failed_units"] = store.failures()
        write_json(report, Path(out) / "study.json")
        return report
    report["shapes"] = analyze_shapes(config, ((u, store.load(u)) for u in units))
    write_tables(report, out, plots=plots)
    report["wall_seconds"]["total"] = time.perf_counter() - start
    report["environment"]["load_average_end"] = load_average()
    write_json(report, Path(out) / "study.json")  # once, last: with the total time
    return report


def _previous(path: Path) -> dict[str, Any]:
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return report if isinstance(report, dict) else {}
