"""PNG plots of a study report (matplotlib, imported lazily, Agg backend).

* ``error_vs_depth.png``: fluctuation (filled) and bias (open) against L, one
  colour per M, with the fitted lines (coloured, dashed), the theoretical slopes
  (black) and the limit's reference error (grey line);
* ``error_vs_width.png``: fluctuation against M, one colour per L;
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
group (seed, D, α, η, steps) of the report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deepres.study.shared.report import require_matplotlib, save_figure

__all__ = ["plot_report"]


def _guide(ax: Any, xs: list[float], y0: float, slope: float, **style: Any) -> None:
    """A line of the given log-log slope through (xs[0], y0)."""
    ax.plot([xs[0], xs[-1]], [y0, y0 * (xs[-1] / xs[0]) ** slope], **style)


def _fit_line(ax: Any, fit: dict[str, Any], color: Any) -> None:
    if fit["slope"] is None:
        return
    xs = [min(fit["x"]), max(fit["x"])]
    ax.plot(xs, [fit["prefactor"] * x ** fit["slope"] for x in xs], "--", color=color, lw=1)


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
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for i, hidden in enumerate(widths):
        color = colors(i / max(len(widths) - 1, 1))
        # Markers are measurements, coloured dashed lines the fits, black lines the theory.
        ax.plot(depths, [row(d, hidden)["fluctuation"] for d in depths], "o", color=color,
                label=f"fluctuation, M={hidden}")
        ax.plot(depths, [row(d, hidden)["bias_debiased"] or float("nan") for d in depths], "s", color=color,
                mfc="none", label=f"bias, M={hidden}")
        for name in ("fluctuation_vs_depth", "bias_vs_depth"):
            fit = _find(report["fits"], name, hidden=hidden, **group)
            if fit is not None:
                _fit_line(ax, fit, color)
    first = row(depths[0], widths[-1])
    _guide(ax, depths, first["fluctuation"] * 0.5, -0.5, color="k", ls=(0, (1, 3)), label="slope −1/2")
    _guide(ax, depths, first["bias_debiased"] * 0.5, -1.0, color="k", ls=(0, (3, 3)), label="slope −1")
    ax.axhline(reference, color="0.6", lw=1, label="reference error of the limit")
    ax.set(xscale="log", yscale="log", xlabel="depth L", ylabel="RMS error of f (output space)",
           title=f"ResNet vs limit: error vs depth\n{title}")
    ax.legend(fontsize=7, ncol=2)
    written.append(out / "error_vs_depth.png")
    fig.tight_layout()
    save_figure(fig, written[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for i, depth in enumerate(depths):
        color = colors(i / max(len(depths) - 1, 1))
        ax.plot(widths, [row(depth, m)["fluctuation"] for m in widths], "o-", color=color, label=f"L={depth}")
        fit = _find(report["fits"], "fluctuation_vs_width", depth=depth, **group)
        if fit is not None:
            _fit_line(ax, fit, color)
    _guide(ax, widths, row(depths[0], widths[0])["fluctuation"] * 1.3, -0.5, color="k", ls=":",
           label="slope −1/2")
    ax.axhline(reference, color="0.6", lw=1, label="reference error")
    ax.set(xscale="log", yscale="log", xlabel="hidden width M", ylabel="fluctuation of f",
           title=f"Fluctuation vs width\n{title}")
    ax.legend(fontsize=7)
    written.append(out / "error_vs_width.png")
    fig.tight_layout()
    save_figure(fig, written[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for i, hidden in enumerate(widths):
        color = colors(i / max(len(widths) - 1, 1))
        fit = _find(report["fits"], "bias_vs_depth", hidden=hidden, **group)
        label = f"M={hidden}"
        if fit is not None and fit["slope"] is not None:
            label += f": slope {fit['slope']:.2f} [{fit['ci_low']:.2f}, {fit['ci_high']:.2f}]"
        ax.errorbar(depths, [row(d, hidden)["bias_debiased"] for d in depths],
                    yerr=[row(d, hidden)["bias_se"] for d in depths], fmt="o", color=color, capsize=3,
                    label=label)
        if fit is not None:
            _fit_line(ax, fit, color)
    _guide(ax, depths, row(depths[0], widths[-1])["bias_debiased"] * 0.5, -1.0, color="k", ls=":",
           label="slope −1")
    ax.axhline(reference, color="0.6", lw=1, label="reference error")
    ax.set(xscale="log", yscale="log", xlabel="depth L", ylabel="bias (replica mean − limit), RMS",
           title=f"Bias vs depth (error bars: replica standard error)\n{title}")
    ax.legend(fontsize=7)
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
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for name, marker, label in (("weight_movement", "o-", "relative weight movement"),
                                ("lazy_ode_distance", "s-", "distance to the lazy ODE"),
                                ("linearization_distance", "^-", "distance to the linearization")):
        fit = next((f for f in report["lazy"]["fits"] if f["name"] == f"{name}_vs_alpha"), None)
        if fit is not None and fit["slope"] is not None:
            span = f", α ≥ {fit['range'][0]:g}" if fit["range"] else ""
            label += f" (slope {fit['slope']:.2f}{span})"
        ax.plot(alphas, [p[name] for p in sub], marker, label=label)
    d_inf = report["lazy"]["d_inf"][0]["d_inf"] if report["lazy"]["d_inf"] else None
    if d_inf is not None:
        ax.axhline(d_inf, color="C2", ls=":", lw=1, label=f"d∞ = {d_inf:.3f} (lazy ODE vs its tangent model)")
    _guide(ax, alphas, sub[0]["weight_movement"] * 1.5, -1.0, color="k", ls=":", label="slope −1")
    _guide(ax, alphas, sub[0]["lazy_ode_distance"] * 0.5, -2.0, color="k", ls="--", label="slope −2")
    ax.set(xscale="log", yscale="log", xlabel="α", ylabel="relative size",
           title=f"Lazy regime: L={sub[0]['depth']}, M={sub[0]['hidden']}, D={sub[0]['dim']}, "
                 f"same initial weights at every α")
    ax.legend(fontsize=7)
    return _save(plt, fig, out / "alpha_sweep.png")


def _plot_alpha_axis(plt: Any, report: dict[str, Any], out: Path) -> list[Path]:
    rows = report.get("alpha_axis", {}).get("points", [])
    if not rows:
        return []
    first = rows[0]
    keys = ("seed", "dim", "eta", "steps")
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
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
        ax.plot(alphas, [r["fluctuation_init"] for r in sub], "o", mfc="none", color=color, alpha=0.6,
                label=f"{space}, at initialization")
    low, high = report["alpha_axis"]["range"]
    ax.axvspan(low, high, color="0.9", zorder=0, label=f"fitted range α ∈ [{low:g}, {high:g}]")
    sub = [r for r in rows if r["space"] == "output" and all(r[k] == first[k] for k in keys)]
    _guide(ax, [r["alpha"] for r in sub], sub[0]["fluctuation_init"] * 0.5, 1.0, color="k", ls=":",
           label="slope +1")
    ax.set(xscale="log", yscale="log", xlabel="α", ylabel="fluctuation (RMS spread across replicas)",
           title=f"Fluctuation vs α: L={first['depth']}, M={first['hidden']}, D={first['dim']}")
    ax.legend(fontsize=7)
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
