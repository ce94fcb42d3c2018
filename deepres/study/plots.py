"""PNG plots of a study report (matplotlib, imported lazily, Agg backend).

* ``error_vs_depth.png``: fluctuation (filled) and bias (open) against L, one
  colour per M, with the fitted lines (coloured, dashed), the theoretical slopes
  (black) and the limit's reference error (grey line);
* ``error_vs_width.png``: fluctuation against M, one colour per L;
* ``bias_vs_depth.png``: the bias with its replica standard error, fitted and −1 slopes;
* ``alpha_sweep.png``: the lazy sweep: weight movement, distance to the lazy ODE and
  to the network's linearization, against α.

Every plot shows the output space at the last recorded step of the first group
(seed, D, α, η, steps) of the report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot_report", "require_matplotlib"]


def require_matplotlib() -> Any:
    """Import matplotlib with the Agg backend, or raise ImportError naming the ``deepres[plot]`` extra."""
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError("plots need matplotlib: install it with `pip install deepres[plot]` "
                          "(or pass --no-plots)") from error
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


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
    fig.savefig(written[-1], dpi=120)
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
    fig.savefig(written[-1], dpi=120)
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
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)

    points = report["lazy"]["points"]
    if points:
        first = points[0]
        sub = [p for p in points if all(p[k] == first[k] for k in ("seed", "dim", "eta", "steps"))]
        alphas = [p["alpha"] for p in sub]
        fig, ax = plt.subplots(figsize=(6.4, 4.8))
        for name, marker, label in (("weight_movement", "o-", "relative weight movement"),
                                    ("lazy_ode_distance", "s-", "distance to the lazy ODE"),
                                    ("linearization_distance", "^-", "distance to the linearization")):
            fit = next((f for f in report["lazy"]["fits"] if f["name"] == f"{name}_vs_alpha"), None)
            if fit is not None and fit["slope"] is not None:
                label += f" (slope {fit['slope']:.2f})"
            ax.plot(alphas, [p[name] for p in sub], marker, label=label)
        _guide(ax, alphas, sub[0]["weight_movement"] * 1.5, -1.0, color="k", ls=":", label="slope −1")
        ax.set(xscale="log", yscale="log", xlabel="α", ylabel="relative size",
               title=f"Lazy regime: L={sub[0]['depth']}, M={sub[0]['hidden']}, D={sub[0]['dim']}")
        ax.legend(fontsize=7)
        written.append(out / "alpha_sweep.png")
        fig.tight_layout()
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    return written
