"""Run (or resume) the phase study, analyze it and write its report: :func:`run_phase`.

The command line around it is :mod:`deepres.study.phase.cli`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from deepres.benchmark.environment import load_average
from deepres.study.phase.analysis import analyze_phase
from deepres.study.phase.config import PhaseConfig
from deepres.study.phase.measure import phase_result_schema, phase_unit_cost, run_phase_unit
from deepres.study.phase.report import write_tables
from deepres.study.shared.environment import study_environment
from deepres.study.shared.files import OutputLock
from deepres.study.shared.outputs import provenance
from deepres.study.shared.report import write_json
from deepres.study.shared.store import ResultStore
from deepres.study.shared.sweep import run_units

__all__ = ["run_phase"]


def run_phase(config: PhaseConfig, out: str | Path, *, device: str = "cpu", backend: str = "auto",
              progress: bool = True, plots: bool = True, wait: bool = False,
              preset: str | None = "phase", argv: list[str] | None = None) -> dict[str, Any]:
    """Run (or resume) the phase study, analyze it and write its report to ``out``.

    Args:
        config: the study. out: output directory.
        device: Default ``"cpu"``. backend: stack backend. Default ``"auto"``.
        progress: tqdm bar weighted by each unit's cost. Default True. plots: write PNGs. Default True.
        wait: when another study holds ``out``'s lock, wait for it. Default False: raise
            :class:`~deepres.study.shared.files.FolderLockedError`.
        preset, argv: the preset's name and the full command line, for the report's
            ``provenance`` (argv default: the interpreter and ``sys.argv``). Default ``"phase"``.

    Returns:
        The report written to ``out/study.json``: ``config``, ``environment``, ``units``,
        ``wall_seconds`` and ``phase`` (see :func:`deepres.study.phase.analysis.analyze_phase`).
    """
    with OutputLock(out).held(wait=wait):
        return _run_phase_locked(config, out, device=device, backend=backend, progress=progress, plots=plots,
                                 preset=preset, argv=argv)


def _run_phase_locked(config: PhaseConfig, out: str | Path, *, device: str, backend: str, progress: bool,
                      plots: bool, preset: str | None, argv: list[str] | None) -> dict[str, Any]:
    start = time.perf_counter()
    environment = study_environment(device, argv)
    # The device type and the backend are part of every unit's key (see ResultStore).
    store = ResultStore(out, device=device, backend=backend, schema=phase_result_schema)
    units = config.units()

    def work(unit: dict[str, Any]) -> dict[str, Any]:
        return run_phase_unit(unit, device=device, backend=backend)

    counts = run_units(units, store, work, cost=phase_unit_cost, progress=progress, desc="phase")
    ran = time.perf_counter() - start
    analysis = analyze_phase(((u, store.load(u)) for u in units), tolerance=config.tolerance,
                             bootstrap=config.bootstrap, level=config.level,
                             linearity_tolerance=config.linearity_tolerance)
    report = {"provenance": provenance(preset, config.as_dict(), store.identity, argv=argv),
              "config": config.as_dict(), "environment": environment, "unit_identity": store.identity,
              "corrupt_files": store.corrupt,
              "units": {key: counts[key] for key in ("total", "resumed", "ran")},
              "wall_seconds": {"run": ran}, "phase": analysis}
    write_tables(report, out, plots=plots)
    report["wall_seconds"]["total"] = time.perf_counter() - start
    report["environment"]["load_average_end"] = load_average()
    write_json(report, Path(out) / "study.json")  # once, last: with the total time
    return report
