"""The convergence study's report files (``study.json``, CSV tables, plots) and its text summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from deepres.study.shared.outputs import write_csv
from deepres.study.shared.report import json_safe, write_study_json

__all__ = ["TABLES", "summary", "write_report", "write_tables"]

#: The CSV tables a convergence study writes (each with its provenance sidecar).
TABLES = ("measurements.csv", "fits.csv")


def write_report(report: dict[str, Any], out: str | Path, *, plots: bool = True) -> list[Path]:
    """Write ``study.json``, ``measurements.csv``, ``fits.csv`` and (optionally) the PNG plots.

    Args:
        report: the study's report (:func:`deepres.study.convergence.run.run_study`).
        out: the output folder (created if missing).
        plots: also write the PNG plots. Default True.

    Returns:
        The paths written, ``study.json`` first.
    """
    return write_study_json(report, out, write_tables(report, out, plots=plots))


def write_tables(report: dict[str, Any], out: str | Path, *, plots: bool = True) -> list[Path]:
    """``measurements.csv``, ``fits.csv`` and (with ``plots``) the PNGs, written into ``out``.

    Args:
        report, out, plots: as :func:`write_report`, which writes ``study.json`` after
            these (a run writes it last, once, with its total time).

    Returns:
        The paths written.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    source = report.get("provenance")
    written = []
    rows = report["measurements"]
    if rows:
        written += write_csv(out / "measurements.csv", rows, list(rows[0]), source)
    fits = report["fits"] + report["lazy"]["fits"]
    names = ["name", "space", "normalization", "fixed", "step", "slope", "ci_low", "ci_high", "theory",
             "theory_in_ci", "bound", "within_bound", "points", "excluded"]
    table = [{"name": f["name"], "space": f["space"], "normalization": f.get("normalization", "coordinate"),
              "fixed": json.dumps(json_safe(f["fixed"])), "step": f["step"], "slope": f["slope"],
              "ci_low": f["ci_low"], "ci_high": f["ci_high"], "theory": f["theory"],
              "theory_in_ci": f.get("theory_in_ci"), "bound": f.get("bound"),
              "within_bound": f.get("within_bound"), "points": f["points"], "excluded": len(f["excluded"])}
             for f in fits]
    written += write_csv(out / "fits.csv", table, names, source)
    if plots:
        from deepres.study.convergence.plots import plot_report

        written += plot_report(report, out)
    return written


def _ci(f: dict[str, Any]) -> str:
    if f["ci_low"] is None:
        return f"slope {f['slope']:+.3f}"
    return f"slope {f['slope']:+.3f} [{f['ci_low']:+.3f}, {f['ci_high']:+.3f}]"


def _in_ci(covered: bool | None) -> str:
    """The stricter criterion beside the band of a check: is the theory inside the CI?"""
    return "" if covered is None else ("  theory in CI" if covered else "  theory outside CI")


def _check_line(c: dict[str, Any]) -> str:
    line = f"  [{'ok' if c['holds'] else 'NO'}] {c['check']}: {c['value']:.4g}"
    if c.get("ci") and c["ci"][0] is not None:
        line += f" [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}]"
    if c.get("theory") is not None:
        line += f" (band; theory {c['theory']:+g} {'in' if c['theory_in_ci'] else 'outside'} the CI)"
    return line


def summary(report: dict[str, Any]) -> str:
    """The report's headline: units, fitted slopes with their CIs against theory, checks."""
    limit, identity = report["limit"], report["unit_identity"]
    lines = [f"deepres study: {report['units']['ran']} units run, {report['units']['resumed']} resumed "
             f"(backend {identity['backend']}, {identity['device']}), "
             f"{report['wall_seconds']['total']:.1f} s; limit: {limit['model']}, {limit['solver']}"]
    if "estimate" in report:
        lines[0] += f" (estimated {report['estimate']['seconds']:.0f} s for the units)"
    for f in report["fits"]:
        if f["space"] != "output" or f["slope"] is None or f["name"] in ("rms_vs_depth", "fluctuation_vs_dim",
                                                                         "fluctuation_vs_alpha"):
            continue
        fixed = ", ".join(f"{k}={v}" for k, v in f["fixed"].items() if k in ("hidden", "depth"))
        theory = "" if f["theory"] is None else f"  theory {f['theory']:+.1f}"
        lines.append(f"  {f['name']:<22} {fixed:<10} {_ci(f)}{theory}{_in_ci(f.get('theory_in_ci'))}"
                     + (f"  ({len(f['excluded'])} points excluded)" if f["excluded"] else ""))
    for f in report["fits"]:
        if f["name"] == "fluctuation_vs_alpha" and f["slope"] is not None:
            low, high = f["range"]
            lines.append(f"  fluctuation_vs_alpha ({f['space']}) L={f['fixed']['depth']} "
                         f"M={f['fixed']['hidden']} D={f['fixed']['dim']}, α in [{low:g}, {high:g}]: "
                         f"{_ci(f)}  theory +1")
    dim_fits: dict[tuple, list[dict[str, Any]]] = {}
    for f in report["fits"]:
        if f["name"] == "fluctuation_vs_dim" and f["slope"] is not None:
            dim_fits.setdefault((f["space"], f["normalization"], f["step"]), []).append(f)
    for (space, norm, step), group in dim_fits.items():
        slopes = [f["slope"] for f in group]
        within = sum(bool(f["within_bound"]) for f in group)
        when = "at init" if step == 0 else f"at step {step}"
        lines.append(f"  fluctuation_vs_dim {space} ({norm}) {when}: slopes {min(slopes):+.2f} to "
                     f"{max(slopes):+.2f} over {len(group)} (L, M); bound {group[0]['bound']:+.1f}, "
                     f"within it in {within} of {len(group)}")
    for f in report["lazy"]["fits"]:
        if f["slope"] is not None:
            span = f" (α ≥ {f['range'][0]:g})" if f["range"] else ""
            lines.append(f"  {f['name']:<34} {_ci(f)}  theory {f['theory']:+.1f}{span}")
    for d in report["lazy"]["d_inf"]:
        lines.append(f"  d_inf (lazy ODE vs its tangent model) = {d['d_inf']:.4f} ± {d['d_inf_se']:.4f}")
    for lin in report["lazy"]["linearization"]:
        if lin["spread"] is not None:
            lines.append(f"  linearization distance over α ≥ {lin['from_alpha']:g}: spread "
                         f"{lin['spread']:.2g}, largest gap to d_inf {lin['max_gap_to_d_inf']:.2g}")
    lines.append("  checks ([ok]: within the band around the theory; the CI criterion beside it, see "
                 "docs/study.md, 'Which criterion counts'):")
    lines += [_check_line(c) for c in report["checks"]]
    return "\n".join(lines)
