"""The shapes study's report: its tables (``shapes_measurements.csv``, ``shapes_fits.csv``), its
figures and its console summary. ``study.json`` is written by the run (:mod:`deepres.study.shapes.run`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from deepres.study.shared.outputs import write_csv
from deepres.study.shared.report import json_safe

__all__ = ["summary", "write_tables"]

_PROG = "deepres study"


def write_tables(report: dict[str, Any], out: str | Path, *, plots: bool = True) -> list[Path]:
    """The shapes study's tables and figures, beside its ``study.json`` in ``out``.

    Args:
        report: the study's report (:func:`deepres.study.shapes.run.run_shapes`), with its
            ``shapes`` section. out: the output folder (created if missing).
        plots: also draw the PNGs (:func:`deepres.study.shapes.plots.plot_shapes`). Default True.

    Returns:
        The paths written: ``shapes_measurements.csv``, ``shapes_fits.csv``, then the figures.
        ``study.json`` itself is the run's to write, once, last, when its total time is known.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shapes = report["shapes"]
    rows = []
    for step, fits in shapes["fits_by_step"].items():
        for name, fit in fits.items():
            variants = [(name, fit)] + ([(f"{name}_linear", fit["linear"])] if "linear" in fit else [])
            for label, f in variants:
                rows.append({"step": step, "fit": label, "a": f.get("a"), "b": f.get("b"),
                             "ci_a": json.dumps(json_safe(f.get("ci_a"))),
                             "ci_b": json.dumps(json_safe(f.get("ci_b"))), "slope": f.get("slope"),
                             "ci": json.dumps(json_safe(f.get("ci"))),
                             "rms_log_residual": f.get("rms_log_residual"), "points": f.get("points"),
                             "excluded": len(f.get("excluded", []))})
    source = report.get("provenance")
    written = [*write_csv(out / "shapes_measurements.csv", shapes["measurements"], None, source),
               *write_csv(out / "shapes_fits.csv", rows, None, source)]
    if plots:
        from deepres.study.shapes.plots import plot_shapes

        written += plot_shapes(report, out)
    return written


def _ci(values: list[float] | None) -> str:
    return "" if values is None else f" [{values[0]:.3g}, {values[1]:.3g}]"


def summary(report: dict[str, Any]) -> str:
    """The console summary: units, time, fitted constants, P-slopes against −1/6."""
    fits = report["shapes"]["fits"]
    lines = [f"{_PROG} --preset shapes: {report['units']['ran']} units run, {report['units']['resumed']} "
             f"resumed, {report['wall_seconds']['total']:.0f} s"]
    for space in ("embedding", "output"):
        f = fits[space]
        if f["a"] is None:
            lines.append(f"  {space}: too few points pass the reference rule to fit ({f['points']})")
            continue
        lines.append(f"  {space}: err ≈ √((a·√(D/(L·M)))² + (b/√D)²), a = {f['a']:.3g}{_ci(f['ci_a'])}, "
                     f"b = {f['b']:.3g}{_ci(f['ci_b'])} ({f['points']} points, "
                     f"{len(f['excluded'])} excluded); the reference's own D bias b/√D_ref = "
                     f"{f['reference_dim_bias']:.3g}")
    out = fits["output"]
    if out.get("better_form"):
        lin = out["linear"]
        lines.append(f"  output, D/(L·M) term linear: a = {lin['a']:.3g}{_ci(lin['ci_a'])}, "
                     f"b = {lin['b']:.3g}"
                     f"{_ci(lin['ci_b'])}; the {out['better_form']} form fits better (RMS log residual "
                     f"{out['rms_log_residual']:.3g} under the square root, {lin['rms_log_residual']:.3g} "
                     f"linear: ×{out['residual_ratio']:.2f})")
    for name in ("embedding_vs_P", "output_vs_P", "embedding_vs_P_contrast", "output_vs_P_contrast"):
        f = fits.get(name)
        if not f:
            continue
        if f["slope"] is None:
            lines.append(f"  {name}: too few points pass the reference rule ({f['points']})")
            continue
        verdict = ("agrees with -1/6" if f["agrees"] else "does not agree with -1/6") \
            if f["agrees"] is not None else "no CI"
        lines.append(f"  {name}: slope {f['slope']:+.3f}{_ci(f['ci'])} over {f['points']} points "
                     f"({len(f['excluded'])} excluded): {verdict}")
    return "\n".join(lines)

