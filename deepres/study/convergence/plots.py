"""PNG plots of a study report (matplotlib, imported lazily, Agg backend).

* ``error_vs_depth.png``: fluctuation (filled) and bias (open) against L, one
  colour per M, with the fitted lines (coloured, dashed) and their slopes in the
  legend, the theoretical slopes (black) and the limit's reference error (grey line);
* ``error_vs_width.png``: fluctuation against M, one colour per L, fitted slopes in
  the legend;
* ``bias_vs_depth.png``: the bias with its replica standard error, fitted and −1 slopes;
* ``alpha_sweep.png``: the lazy sweep: weight movement, distance to the lazy ODE and
  to the network's linearization against α, with d_∞ and the −1, −2 guides;
* ``fluctuation_vs_alpha.png``: the α axis: the fluctuation against α at
  initialization and after training, in output and embedding space, the fitted range
  shaded;
* ``error_vs_dim.png`` (with ≥ 2 dims): the fluctuation against D at initialization
  and after training, in output space and in embedding space (per-coordinate RMS),
  with the +1/2 slope of the bound.

The first three plots show the output space at the last recorded step of the first
group (seed, D, α, η, steps) of the report. In every plot a point a fit left out
(too close to the limit's reference error, or to the noise) is crossed out in grey,
and the legends sit beside the axes, where they hide no data. A reference error far
below the data (more than :data:`REFERENCE_SPAN` below its smallest point) is named
in a note instead of drawn, so that it does not squeeze the data into a corner.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deepres.study.shared.report import require_matplotlib, save_figure

__all__ = ["REFERENCE_SPAN", "plot_report"]

#: How far below the smallest plotted point the reference error may be drawn as a line.
REFERENCE_SPAN = 30.0


def _guide(ax: Any, xs: list[float], y0: float, slope: float, **style: Any) -> None:
    """A line of the given log-log slope through (xs[0], y0)."""
    ax.plot([xs[0], xs[-1]], [y0, y0 * (xs[-1] / xs[0]) ** slope], **style)


def _fit_line(ax: Any, fit: dict[str, Any], color: Any) -> None:
    if fit["slope"] is None:
        return
    xs = [min(fit["x"]), max(fit["x"])]
    ax.plot(xs, [fit["prefactor"] * x ** fit["slope"] for x in xs], "--", color=color, lw=1)


def _slope(fit: dict[str, Any] | None) -> str:
    """``: slope −0.51 [−0.53, −0.49]`` for a legend ('' without a fitted slope)."""
    if fit is None or fit["slope"] is None:
        return ""
    if fit["ci_low"] is None:
        return f": slope {fit['slope']:.2f}"
    return f": slope {fit['slope']:.2f} [{fit['ci_low']:.2f}, {fit['ci_high']:.2f}]"


def _mark_excluded(ax: Any, fits: list[dict[str, Any] | None]) -> None:
    """Cross out the points the fits left out (one legend entry for all of them)."""
    points = [(e["x"], e["value"]) for f in fits if f is not None for e in f["excluded"]
              if e.get("value") is not None and e["value"] > 0]
    if points:
        xs, ys = zip(*points, strict=True)
        named = any(line.get_label() == "left out of the fit" for line in ax.get_lines())
        ax.plot(xs, ys, "x", color="0.35", ms=9, mew=1.5, ls="none",
                label="_left out" if named else "left out of the fit")  # one legend entry per plot


def _reference(ax: Any, reference: float, data: list[float], label: str) -> None:
    """The limit's reference error: a grey line, or a note when far below the data."""
    positive = [v for v in data if v is not None and v > 0]
    if not positive or reference is None or not reference > 0:
        return
    if reference >= min(positive) / REFERENCE_SPAN:
        ax.axhline(reference, color="0.6", lw=1, label=label)
    else:
        ax.text(0.02, 0.02, f"{label}: {reference:.2g}, below this axis", transform=ax.transAxes,
                fontsize=7, color="0.4")


def _legend(ax: Any, **options: Any) -> None:
    """The legend beside the axes: it hides no point and no line."""
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, **options)


def _find(fits: list[dict[str, Any]], name: str, **fixed: Any) -> dict[str, Any] | None:
    for f in fits:
        if (f["name"] == name and f["space"] == "output"
                and all(f["fixed"].get(k) == v for k, v in fixed.items())):
            return f
    return None


def plot_report(report: dict[str, Any], out: str | Path) -> list[Path]:
    """Write the PNG plots of ``report`` into ``out``; returns their paths."""
    plt = require_matplotlib()
    out = Path(out)
    config = report["config"]
    limit = report["limits"][0]
    group = {k: limit[k] for k in ("seed", "dim", "alpha", "eta", "steps")}
    last = limit["record_steps"][-1]
    rows = [r for r in report["measurements"] if r["space"] == "output" and r["step"] == last
            and all(r[k] == v for k, v in group.items())]
    reference = limit["output"]["reference_error"][-1]
    title = (f"D={group['dim']}, α={group['alpha']:g}, η={group['eta']:g}, {group['steps']} steps, "
             f"R={config['replicas']}")
    colors = plt.get_cmap("viridis")
    written = []

    def row(depth: int, hidden: int) -> dict[str, Any]:
        return next(r for r in rows if r["depth"] == depth and r["hidden"] == hidden)

    depths, widths = config["depths"], config["widths"]
    fig, ax = plt.subplots(figsize=(9.6, 4.8))
    plotted: list[float] = []
    fitted: list[dict[str, Any] | None] = []
    for i, hidden in enumerate(widths):
        color = colors(i / max(len(widths) - 1, 1))
        # Markers are measurements, coloured dashed lines the fits, black lines the theory.
        fluct = _find(report["fits"], "fluctuation_vs_depth", hidden=hidden, **group)
        bias = _find(report["fits"], "bias_vs_depth", hidden=hidden, **group)
        values = [row(d, hidden)["fluctuation"] for d in depths]
        biases = [row(d, hidden)["bias_debiased"] or float("nan") for d in depths]
        plotted += values + biases
        ax.plot(depths, values, "o", color=color, label=f"fluctuation, M={hidden}{_slope(fluct)}")
        ax.plot(depths, biases, "s", color=color, mfc="none", label=f"bias, M={hidden}{_slope(bias)}")
        for fit in (fluct, bias):
            if fit is not None:
                _fit_line(ax, fit, color)
        fitted += [fluct, bias]
    _mark_excluded(ax, fitted)
    first = row(depths[0], widths[-1])
    _guide(ax, depths, first["fluctuation"] * 0.5, -0.5, color="k", ls=(0, (1, 3)), label="slope −1/2")
    _guide(ax, depths, first["bias_debiased"] * 0.5, -1.0, color="k", ls=(0, (3, 3)), label="slope −1")
    _reference(ax, reference, plotted, "reference error of the limit")
    ax.set(xscale="log", yscale="log", xlabel="depth L",
           ylabel="error of f vs the limit (output space, RMS)",
           title=f"ResNet vs limit: fluctuation and bias vs depth\n{title}")
    _legend(ax)
    written.append(out / "error_vs_depth.png")
    fig.tight_layout()
    save_figure(fig, written[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9.6, 4.8))
    plotted, fitted = [], []
    for i, depth in enumerate(depths):
        color = colors(i / max(len(depths) - 1, 1))
        fit = _find(report["fits"], "fluctuation_vs_width", depth=depth, **group)
        values = [row(depth, m)["fluctuation"] for m in widths]
        plotted += values
        ax.plot(widths, values, "o", color=color, label=f"L={depth}{_slope(fit)}")
        if fit is not None:
            _fit_line(ax, fit, color)
        fitted.append(fit)
    _mark_excluded(ax, fitted)
    _guide(ax, widths, row(depths[0], widths[0])["fluctuation"] * 1.3, -0.5, color="k", ls=":",
           label="slope −1/2")
    _reference(ax, reference, plotted, "reference error of the limit")
    ax.set(xscale="log", yscale="log", xlabel="hidden width M", ylabel="fluctuation of f (output space, RMS)",
           title=f"Fluctuation vs width\n{title}")
    _legend(ax)
    written.append(out / "error_vs_width.png")
    fig.tight_layout()
    save_figure(fig, written[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9.6, 4.8))
    plotted, fitted = [], []
    for i, hidden in enumerate(widths):
        color = colors(i / max(len(widths) - 1, 1))
        fit = _find(report["fits"], "bias_vs_depth", hidden=hidden, **group)
        values = [row(d, hidden)["bias_debiased"] for d in depths]
        plotted += values
        ax.errorbar(depths, values, yerr=[row(d, hidden)["bias_se"] for d in depths], fmt="o", color=color,
                    capsize=3, label=f"M={hidden}{_slope(fit)}")
        if fit is not None:
            _fit_line(ax, fit, color)
        fitted.append(fit)
    _mark_excluded(ax, fitted)
    _guide(ax, depths, row(depths[0], widths[-1])["bias_debiased"] * 0.5, -1.0, color="k", ls=":",
           label="slope −1")
    _reference(ax, reference, plotted, "reference error of the limit")
    ax.set(xscale="log", yscale="log", xlabel="depth L", ylabel="bias (replica mean − limit), RMS",
           title=f"Bias vs depth (error bars: replica standard error)\n{title}")
    _legend(ax)
    written.append(out / "bias_vs_depth.png")
    fig.tight_layout()
    save_figure(fig, written[-1], dpi=120)
    plt.close(fig)

    written += _plot_lazy(plt, report, out)
    written += _plot_alpha_axis(plt, report, out)
    written += _plot_dims(plt, report, out)
    return written


def _save(plt: Any, fig: Any, path: Path) -> list[Path]:
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)
    return [path]


def _plot_lazy(plt: Any, report: dict[str, Any], out: Path) -> list[Path]:
    points = report["lazy"]["points"]
    if not points:
        return []
    first = points[0]
    sub = [p for p in points if all(p[k] == first[k] for k in ("seed", "dim", "eta", "steps"))]
    alphas = [p["alpha"] for p in sub]
    fig, ax = plt.subplots(figsize=(9.6, 4.8))
    for name, marker, label in (("weight_movement", "o-", "weight movement ‖θ − θ₀‖ / ‖θ₀‖"),
                                ("lazy_ode_distance", "s-", "distance to the lazy ODE / output movement"),
                                ("linearization_distance", "^-",
                                 "distance to the linearization / output movement")):
        fit = next((f for f in report["lazy"]["fits"] if f["name"] == f"{name}_vs_alpha"), None)
        if fit is not None and fit["slope"] is not None:
            span = f", α ≥ {fit['range'][0]:g}" if fit["range"] else ""
            label += f" (slope {fit['slope']:.2f}{span})"
        ax.plot(alphas, [p[name] for p in sub], marker, label=label)
        if fit is not None:
            _mark_excluded(ax, [fit])
    d_inf = report["lazy"]["d_inf"][0]["d_inf"] if report["lazy"]["d_inf"] else None
    if d_inf is not None:
        ax.axhline(d_inf, color="C2", ls=":", lw=1, label=f"d∞ = {d_inf:.3f} (lazy ODE vs its tangent model)")
    _guide(ax, alphas, sub[0]["weight_movement"] * 1.5, -1.0, color="k", ls=":", label="slope −1")
    _guide(ax, alphas, sub[0]["lazy_ode_distance"] * 0.5, -2.0, color="k", ls="--", label="slope −2")
    ax.set(xscale="log", yscale="log", xlabel="α", ylabel="ratio (each as its legend entry says)",
           title=f"α sweep (the lazy regime): L={sub[0]['depth']}, M={sub[0]['hidden']}, D={sub[0]['dim']}, "
                 f"same initial weights at every α")
    _legend(ax)
    return _save(plt, fig, out / "alpha_sweep.png")


def _plot_alpha_axis(plt: Any, report: dict[str, Any], out: Path) -> list[Path]:
    rows = report.get("alpha_axis", {}).get("points", [])
    if not rows:
        return []
    first = rows[0]
    keys = ("seed", "dim", "eta", "steps")
    fig, ax = plt.subplots(figsize=(9.6, 4.8))
    for color, space in (("C0", "output"), ("C1", "embedding")):
        sub = [r for r in rows if r["space"] == space and all(r[k] == first[k] for k in keys)]
        alphas = [r["alpha"] for r in sub]
        fit = next((f for f in report["fits"] if f["name"] == "fluctuation_vs_alpha" and f["space"] == space
                    and all(f["fixed"][k] == first[k] for k in keys)), None)
        label = f"{space}, after {first['steps']} steps"
        if fit is not None and fit["slope"] is not None:
            label += f" (slope {fit['slope']:.2f} [{fit['ci_low']:.2f}, {fit['ci_high']:.2f}])"
            _fit_line(ax, fit, color)
        ax.plot(alphas, [r["fluctuation"] for r in sub], "o", color=color, label=label)
        if fit is not None:
            _mark_excluded(ax, [fit])
        ax.plot(alphas, [r["fluctuation_init"] for r in sub], "o", mfc="none", color=color, alpha=0.6,
                label=f"{space}, at initialization")
    low, high = report["alpha_axis"]["range"]
    ax.axvspan(low, high, color="0.9", zorder=0, label=f"fitted range α ∈ [{low:g}, {high:g}]")
    sub = [r for r in rows if r["space"] == "output" and all(r[k] == first[k] for k in keys)]
    _guide(ax, [r["alpha"] for r in sub], sub[0]["fluctuation_init"] * 0.5, 1.0, color="k", ls=":",
           label="slope +1")
    ax.set(xscale="log", yscale="log", xlabel="α", ylabel="fluctuation (RMS spread across replicas)",
           title=f"Fluctuation vs α: L={first['depth']}, M={first['hidden']}, D={first['dim']}")
    _legend(ax)
    return _save(plt, fig, out / "fluctuation_vs_alpha.png")


def _plot_dims(plt: Any, report: dict[str, Any], out: Path) -> list[Path]:
    config = report["config"]
    dims = config["dims"]
    if len(dims) < 2:
        return []
    limit = report["limits"][0]
    group = {k: limit[k] for k in ("seed", "alpha", "eta", "steps")}
    widths = config["widths"]
    hidden = widths[len(widths) // 2]
    last = limit["record_steps"][-1]
    colors = plt.get_cmap("viridis")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    for ax, space in zip(axes, ("output", "embedding"), strict=True):
        for i, depth in enumerate(config["depths"]):
            color = colors(i / max(len(config["depths"]) - 1, 1))
            for step, style in ((last, "o-"), (0, "o:")):
                values = []
                for dim in dims:
                    row = next((r for r in report["measurements"] if r["space"] == space and r["step"] == step
                                and r["depth"] == depth and r["hidden"] == hidden and r["dim"] == dim
                                and all(r[k] == v for k, v in group.items())), None)
                    values.append(row["fluctuation"] if row else float("nan"))
                ax.plot(dims, values, style, color=color, mfc=color if step else "none",
                        label=f"L={depth}" if step else None)
        scale = [r["fluctuation"] for r in report["measurements"] if r["space"] == space and r["step"] == 0
                 and r["hidden"] == hidden and r["dim"] == dims[0]]
        if scale:
            _guide(ax, dims, min(scale) * 0.5, 0.5, color="k", ls="--", label="slope +1/2 (the bound)")
        what = "f" if space == "output" else "h_L (per-coordinate RMS)"
        ax.set(xscale="log", yscale="log", xlabel="embedding dimension D", ylabel=f"fluctuation of {what}",
               title=f"{space} space, M={hidden}")
        ax.set_xticks(dims, [str(d) for d in dims])
        ax.tick_params(axis="x", which="minor", bottom=False, labelbottom=False)
        ax.legend(fontsize=7, ncol=2)
    fig.suptitle(f"Fluctuation vs D: filled after {last} steps, open at initialization "
                 "(the norm of h adds +1/2 to every slope)", fontsize=10)
    return _save(plt, fig, out / "error_vs_dim.png")
