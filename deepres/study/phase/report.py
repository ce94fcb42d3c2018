"""The phase study's report files (``study.json``, ``phase_points.csv``, ``phase_measurements.csv``,
figures) and its text summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deepres.study.phase.family import AXES
from deepres.study.shared.outputs import write_csv
from deepres.study.shared.report import write_study_json

__all__ = ["TABLES", "summary", "write_phase_report", "write_tables"]

#: The CSV tables the phase study writes (each with its provenance sidecar).
TABLES = ("phase_points.csv", "phase_measurements.csv")


def write_phase_report(report: dict[str, Any], out: str | Path, *, plots: bool = True) -> list[Path]:
    """Write ``study.json``, ``phase_points.csv``, ``phase_measurements.csv`` and (optionally) the PNGs.

    Args:
        report: the phase study's report (:func:`deepres.study.phase.run.run_phase`).
        out: the output folder (created if missing). plots: also write the PNGs. Default True.

    Returns:
        The paths written, ``study.json`` first.
    """
    return write_study_json(report, out, write_tables(report, out, plots=plots))


def write_tables(report: dict[str, Any], out: str | Path, *, plots: bool = True) -> list[Path]:
    """Write the two CSV tables of the phase study and (optionally) its figures, in ``out``.

    Everything of :func:`write_phase_report` except ``study.json``, which a run
    writes after these, once, when its total time is known. Arguments as there.
    Returns the paths written.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    source = report.get("provenance")
    phase = report["phase"]
    points = [p for d in ("depth", "dim") for p in phase.get(d, {}).get("points", [])]
    rows = []
    for p in points:
        first, second = AXES[p["diagram"]]
        row = {"diagram": p["diagram"], "x1": p[first], "x2": p[second], "line_offset": p["line_offset"],
               "regime": p["regime"], "theory_regime": p["theory_regime"],
               "signs": " ".join(f"{k}{v}" for k, v in p["signs"].items())}
        for name, fit in p["exponents"].items():
            row |= {name: fit["slope"], f"{name}_ci_low": fit["ci_low"],
                    f"{name}_ci_high": fit["ci_high"], f"{name}_theory": fit["theory"]}
        rows.append(row)
    written = write_csv(out / TABLES[0], rows, None, source)
    measurements = [{k: v for k, v in r.items() if k != "loss_curve"}
                    for d in ("depth", "dim") for r in phase.get(d, {}).get("measurements", [])]
    written += write_csv(out / TABLES[1], measurements, None, source)
    if plots:
        from deepres.study.phase.plots import plot_phase

        written += plot_phase(report, out)
    return written


def summary(report: dict[str, Any]) -> str:
    """The phase report's headline: units, each point's exponents and regime, the checks."""
    lines = [f"deepres study --preset phase: {report['units']['ran']} units run, "
             f"{report['units']['resumed']} resumed, {report['wall_seconds']['total']:.1f} s"]
    for diagram, label in (("depth", "(β, γ)"), ("dim", "(δ, λ)")):
        section = report["phase"].get(diagram)
        if not section:
            continue
        quantity = {"depth": "weight_step", "dim": "preact_step"}[diagram]
        lines.append(f"  {diagram} diagram {label}: exponent of the output step, of the unit step -> regime")
        for p in section["points"]:
            first, second = (p[k] for k in AXES[diagram])
            out_fit, unit_fit = p["exponents"]["output_step"], p["exponents"][quantity]
            lines.append(f"    ({first:+.2f}, {second:+.2f})  output {_fmt(out_fit)}  unit {_fmt(unit_fit)}  "
                         f"-> {p['regime']}" + ("" if p["regime"] == p["theory_regime"]
                                                 else f"  (scaling argument: {p['theory_regime']})"))
    for check in report["phase"]["checks"]:
        lines.append(f"  [{'ok' if check['holds'] else 'NO'}] {check['check']}: {check['value']}")
    return "\n".join(lines)


def _fmt(fit: dict[str, Any]) -> str:
    if fit["slope"] is None:
        return "   n/a"
    return f"{fit['slope']:+.3f} [{fit['ci_low']:+.3f}, {fit['ci_high']:+.3f}]"
