"""Run (or resume) a convergence study, analyze it and write its report: :func:`run_study`.

The command line around it is :mod:`deepres.study.convergence.cli`.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from deepres.study.convergence.analysis import analyze
from deepres.study.convergence.estimate import calibrate, estimate, format_seconds, model_seconds
from deepres.study.convergence.presets import StudyConfig
from deepres.study.convergence.report import write_tables
from deepres.study.convergence.sweep import run_units
from deepres.study.convergence.units import result_schema
from deepres.study.shared.environment import study_environment
from deepres.study.shared.files import OutputLock
from deepres.study.shared.outputs import provenance
from deepres.study.shared.report import write_json
from deepres.study.shared.store import ResultStore
from deepres.study.shared.sweep import Executor, LocalExecutor

__all__ = ["run_study"]


def run_study(config: StudyConfig, out: str | Path, *, device: str = "cpu", backend: str = "auto",
              progress: bool = True, plots: bool = True, executor: Executor | None = None,
              estimate: bool = True, wait: bool = False, preset: str | None = None,
              argv: list[str] | None = None) -> dict[str, Any]:
    """Run (or resume) a study, analyze it and write its report to ``out``.

    The output folder is locked for the whole run (:class:`~deepres.study.shared.files.OutputLock`).

    Args:
        config: the study. out: output directory.
        device: Default ``"cpu"``. backend: stack backend. Default ``"auto"``. Both are
            part of every stored result's key: results of another backend or device type
            are not resumed.
        progress: tqdm bar. Default True. plots: write PNGs. Default True.
        executor: where the units run. Default None: :class:`~deepres.study.shared.sweep.LocalExecutor`.
        estimate: before any unit runs, time one probe per kind of unit on this machine
            and print the predicted total time (:mod:`deepres.study.convergence.estimate`); the bar
            then counts the calibrated seconds. Default True.
        wait: when another process holds the lock on ``out``, wait for it. Default
            False: raise :class:`~deepres.study.shared.files.FolderLockedError`.
        preset, argv: the preset's name and the full command line, for the report's
            ``provenance``. Defaults: None (a configuration given through the Python API),
            and the interpreter and ``sys.argv``.

    Returns:
        The report dict written to ``out/study.json``, with ``provenance`` (preset,
        command line, deepres version, git commit: :func:`~deepres.study.shared.outputs.provenance`,
        also in each CSV table's sidecar), ``unit_identity`` (the backend
        and device type the results are keyed by) and ``corrupt_files`` (stored results
        that could not be read back: renamed to ``*.corrupt`` and recomputed). When units
        failed (see :class:`~deepres.study.shared.ray_executor.RayExecutor`), the report lists them
        under ``failed_units`` and holds no analysis, which needs every unit; rerun to retry them.
    """
    with OutputLock(out).held(wait=wait):
        return _run_study_locked(config, out, device=device, backend=backend, progress=progress,
                                 plots=plots, executor=executor, estimate=estimate, preset=preset,
                                 argv=argv)


def _run_study_locked(config: StudyConfig, out: str | Path, *, device: str, backend: str, progress: bool,
                      plots: bool, executor: Executor | None, estimate: bool, preset: str | None,
                      argv: list[str] | None) -> dict[str, Any]:
    store = ResultStore(out, device=device, backend=backend, schema=result_schema)
    units = config.units()
    todo = [u for u in units if not store.has(u)]
    start = time.perf_counter()
    predicted, cost = _estimate(todo, device=device, backend=backend) if estimate and todo else (None, None)
    calibrated = time.perf_counter()
    counts = run_units(units, store, executor=executor, device=device, backend=backend, progress=progress,
                       cost=cost)
    ran = time.perf_counter() - calibrated
    report = {
        "provenance": provenance(preset, config.as_dict(), store.identity, argv=argv),
        "config": config.as_dict(),
        "unit_identity": store.identity,
        "limit": {"model": "MeanODENet (ODE-adjoint gradient)", "solver": config.resolved_solver,
                  "particle_init": config.resolved_particle_init, "particles": config.particles,
                  "grid_steps": config.grid_steps, "sets": config.limit_sets},
        "environment": study_environment(device, argv)
        | {"executor": type(executor or LocalExecutor()).__name__},
        "units": counts,
        "corrupt_files": store.corrupt,
        "wall_seconds": {"run": ran, "total": time.perf_counter() - start},
    }
    if predicted is not None:
        report["estimate"] = predicted | {"calibration_seconds": calibrated - start,
                                          "measured_seconds": ran,
                                          "measured_unit_seconds": _unit_seconds(store, todo)}
    elif not todo:
        # Everything was read back: keep the estimate of the run that computed the units.
        previous = _previous_estimate(Path(out) / "study.json")
        if previous is not None:
            report["estimate"] = previous | {"from_an_earlier_run": True}
    if counts["failed"]:
        report["failed_units"] = store.failures()
        write_json(report, Path(out) / "study.json")
        return report
    report |= analyze(config, store)
    write_tables(report, out, plots=plots)
    report["wall_seconds"]["total"] = time.perf_counter() - start
    write_json(report, Path(out) / "study.json")  # once, last: with the total time
    return report


def _estimate(todo: list[dict[str, Any]], *, device: str, backend: str,
              ) -> tuple[dict[str, Any], Any]:
    """Calibrate the cost model on this machine, print the predicted time; the bar's cost function."""
    calibration = calibrate(todo, device=device, backend=backend)
    predicted = estimate(todo, calibration)
    kinds = ", ".join(f"{kind} {format_seconds(e['seconds'])} ({e['units']} units)"
                      for kind, e in predicted["by_kind"].items())
    print(f"deepres study: {len(todo)} units to run, estimated {format_seconds(predicted['seconds'])} "
          f"on this machine ({kinds}; per-unit cost timed here against the reference CPU: "
          + ", ".join(f"{k} ×{f:.2f}" for k, f in predicted["factors"].items()) + ")",
          file=sys.stderr, flush=True)
    probes = [{"kind": kind} | {k: v for k, v in entry.items()} for kind, entry in calibration.items()]
    factors = predicted["factors"]

    def cost(unit: dict[str, Any]) -> float:
        return model_seconds(unit) * factors[unit["kind"]]

    return predicted | {"probes": probes}, cost


def _previous_estimate(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text()).get("estimate")
    except (OSError, ValueError):
        return None


def _unit_seconds(store: Any, units: list[dict[str, Any]]) -> dict[str, float]:
    """Measured wall time per kind of the units just run (their stored ``seconds``)."""
    out: dict[str, float] = {}
    for unit in units:
        if store.path(unit).is_file():  # just run and checked: no second read to validate it
            out[unit["kind"]] = out.get(unit["kind"], 0.0) + float(store.load(unit)["seconds"])
    return out
