"""PNG figures of the phase study (matplotlib, Agg backend, imported lazily).

* ``phase_diagram.png``: the (β, γ) plane, each point coloured by its measured
  regime (a black ring where the scaling argument says otherwise), the lines
  γ = 2β − 1, β = 1/2 and β = 1, and the named parameterizations;
* ``phase_diagram_dim.png``: the (δ, λ) plane of the dimension diagram, with
  λ = 1 − 2δ and δ = 1/2;
* ``coord_<quantity>.png``: coordinate checks, the quantity against L, log-log,
  one curve per point (first step: ``output_step``, ``weight_step``,
  ``preact_step``, ``init_fluct_h``; K steps: ``output_move``, ``weight_move``,
  ``loss_decrease``, ``nonlinearity``; ``diverged``: the fraction of replicas
  whose loss went up or became non-finite);
* ``coord_dim.png``: the dimension diagram's first-step quantities against D.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deepres.study.phase.family import AXES
from deepres.study.shared.report import require_matplotlib, save_figure

__all__ = ["REGIME_COLORS", "plot_phase"]

#: Colour of each regime in every figure.
REGIME_COLORS: dict[str, str] = {
    "unstable": "tab:red", "trivial": "tab:gray", "lazy ODE": "tab:blue",
    "complete feature learning": "tab:green", "over-active": "tab:orange", "undetermined": "black",
}

_LABELS = {
    "output_step": "output movement per step, RMS(f₁ − f₀)/η",
    "weight_step": "relative weight movement per step, ‖Δθ‖/‖θ₀‖/η",
    "preact_step": "unit's own pre-activation change per step (relative)/η",
    "init_fluct_h": "fluctuation of h at initialization, RMS(h_L − h₀)",
    "init_fluct_f": "fluctuation of f at initialization",
    "output_move": "output movement after K steps, RMS(f_K − f₀)",
    "weight_move": "relative weight movement after K steps",
    "loss_decrease": "relative loss decrease after K steps",
    "nonlinearity": "distance to the block-linearized model / output movement",
    "diverged": "fraction of replicas whose loss went up or became non-finite",
}


def _point_label(point: dict[str, Any], quantity: str | None = None) -> str:
    first, second = AXES[point["diagram"]]
    text = f"({point[first]:g}, {point[second]:g})"
    fit = point["exponents"].get(quantity) if quantity else None
    if fit is not None and fit["slope"] is not None:
        text += f" {fit['slope']:+.2f}"
    return text


def _diagram(plt: Any, points: list[dict[str, Any]], diagram: str, path: Path, title: str) -> Path:
    first, second = AXES[diagram]
    xs = [p[first] for p in points]
    ys = [p[second] for p in points]
    fig, ax = plt.subplots(figsize=(7.2, 5.6))
    if diagram == "depth":
        xlo, xhi = min([*xs, -0.1]) - 0.15, max(xs) + 0.25
        ylo, yhi = min([*ys, 0.0]) - 0.35, max(ys) + 0.35
        ax.axvspan(xlo, 0.5, color="0.92", zorder=0)
        ax.text(xlo + 0.03, yhi - 0.12, "β < 1/2: the fluctuation\nat initialization grows", fontsize=7,
                va="top")
        line = [2 * x - 1 for x in (xlo, xhi)]
        ax.plot([xlo, xhi], line, "k-", lw=1.2, label="γ = 2β − 1: output moves O(1)")
        for x in (0.5, 1.0):
            ax.axvline(x, color="k", ls="--", lw=0.8)
        ax.text(1.0, ylo + 0.05, " β = 1", fontsize=7)
        ax.text(0.5, ylo + 0.05, " β = 1/2", fontsize=7)
        named = [((1.0, 1.0), "mlu (1, 1)", (12, 8)),
                 ((0.5, 0.0), "depth-μP, 1/√L branch (1/2, 0)", (10, -14)),
                 ((0.0, 0.0), "standard (0, 0)", (8, 10))]
        ax.text(xhi - 0.05, yhi - 0.1, "unstable", ha="right", va="top", fontsize=9, color="tab:red")
        ax.text(xhi - 0.05, ylo + 0.4, "trivial", ha="right", fontsize=9, color="tab:gray")
        ax.set(xlabel="β  (residual multiplier c = α·L^(−β)/M)",
               ylabel="γ  (lr multiplier L^γ·M·D/α²)")
    else:
        xlo, xhi = min(xs) - 0.15, max(xs) + 0.15
        ylo, yhi = min(ys) - 0.3, max(ys) + 0.3
        ax.axvspan(0.5, xhi, color="0.92", zorder=0)
        ax.text(xhi - 0.02, yhi - 0.08, "δ > 1/2: the output's\nfluctuation at\ninitialization grows",
                fontsize=7, ha="right", va="top")
        ax.plot([xlo, xhi], [1 - 2 * x for x in (xlo, xhi)], "k-", lw=1.2,
                label="λ = 1 − 2δ: output moves O(1)")
        ax.axvline(0.5, color="k", ls="--", lw=0.8)
        named = [((0.5, 0.0), "√D/(LM), lr L·M  (= mlu)", (10, 8))]
        ax.set(xlabel="δ  (residual multiplier D^δ/(L·M) on unit-variance weights)",
               ylabel="λ  (lr multiplier L·M·D^λ)")
    seen = set()
    for p in points:
        color = REGIME_COLORS[p["regime"]]
        label = p["regime"] if p["regime"] not in seen else None
        seen.add(p["regime"])
        ax.scatter(p[first], p[second], s=110, color=color, edgecolor="white", zorder=3, label=label)
        if p["regime"] != p["theory_regime"]:
            ax.scatter(p[first], p[second], s=230, facecolor="none", edgecolor="black", zorder=2)
        out = p["exponents"]["output_step"]["slope"]
        unit = p["exponents"]["weight_step" if diagram == "depth" else "preact_step"]["slope"]
        if out is not None and unit is not None:
            ax.annotate(f"{out:+.2f} / {unit:+.2f}", (p[first], p[second]), xytext=(7, -3),
                        textcoords="offset points", fontsize=6, color="0.25")
    for (x, y), text, offset in named:
        ax.scatter(x, y, s=260, marker="*", facecolor="none", edgecolor="black", zorder=4)
        ax.annotate(text, (x, y), xytext=offset, textcoords="offset points", fontsize=8, weight="bold")
    ax.set(xlim=(xlo, xhi), ylim=(ylo, yhi), title=title)
    if diagram == "depth":
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, 0.86))
    else:
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    save_figure(fig, path, dpi=130)
    plt.close(fig)
    return path


def _coordinate_check(plt: Any, points: list[dict[str, Any]], rows: list[dict[str, Any]], quantity: str,
                      axis: str, path: Path, title: str, *, loglog: bool = True) -> Path:
    fig, ax = plt.subplots(figsize=(7.2, 5.0))
    markers = "osD^v<>ph*"
    firsts = sorted({p[AXES[p["diagram"]][0]] for p in points})
    for p in points:
        first, second = AXES[p["diagram"]]
        mine = sorted((r for r in rows if (r[first], r[second]) == (p[first], p[second])),
                      key=lambda r: r[axis])
        xs = [r[axis] for r in mine]
        if quantity == "diverged":
            ys = [r["diverged"] / r["replicas"] for r in mine]
        else:
            ys = [r.get(quantity) for r in mine]
            ys = [y if y is not None and (y > 0 or not loglog) else float("nan") for y in ys]
        ax.plot(xs, ys, marker=markers[firsts.index(p[first]) % len(markers)], ms=4, lw=1,
                color=REGIME_COLORS[p["regime"]], label=_point_label(p, quantity))
    ax.set_xscale("log", base=2)
    if loglog:
        ax.set_yscale("log")
    ax.set(xlabel="depth L" if axis == "depth" else "embedding dimension D", ylabel=_LABELS[quantity],
           title=title)
    ax.legend(fontsize=6, ncol=2, title="point, fitted exponent (colour: regime)", title_fontsize=6)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)
    return path


def plot_phase(report: dict[str, Any], out: str | Path) -> list[Path]:
    """Write the figures of a phase report (``report["phase"]``) into ``out``; returns their paths."""
    plt = require_matplotlib()
    out = Path(out)
    config = report["config"]
    written: list[Path] = []
    depth = report["phase"].get("depth")
    if depth:
        setting = (f"M={config['hidden']}, D={config['dim']}, α={config['alpha']:g}, R={config['replicas']}, "
                   f"L={min(config['depths'])}..{max(config['depths'])}")
        written.append(_diagram(plt, depth["points"], "depth", out / "phase_diagram.png",
                                f"Phase diagram in depth (first-step exponents: output / unit)\n{setting}"))
        for quantity in ("output_step", "weight_step", "preact_step", "init_fluct_h"):
            written.append(_coordinate_check(plt, depth["points"], depth["measurements"], quantity, "depth",
                                             out / f"coord_{quantity}.png", f"First step\n{setting}"))
        if "output_move" in depth["points"][0]["exponents"]:
            k_setting = f"{config['steps']} steps at η={config['eta']:g}, {setting}"
            for quantity in ("output_move", "weight_move", "loss_decrease", "nonlinearity", "diverged"):
                written.append(_coordinate_check(
                    plt, depth["points"], depth["measurements"], quantity, "depth",
                    out / f"coord_{quantity}.png", f"K steps\n{k_setting}", loglog=quantity != "diverged"))
    dim = report["phase"].get("dim")
    if dim:
        setting = (f"L={config['dim_depth']}, M={config['dim_hidden']}, α={config['alpha']:g}, "
                   f"R={config['dim_replicas']}, D={min(config['dims'])}..{max(config['dims'])}")
        written.append(_diagram(plt, dim["points"], "dim", out / "phase_diagram_dim.png",
                                f"Phase diagram in D (first-step exponents: output / pre-activation)\n"
                                f"{setting}"))
        fig, axes = plt.subplots(1, 3, figsize=(14, 4.6))
        for ax, quantity in zip(axes, ("output_step", "preact_step", "init_fluct_f"), strict=True):
            for p in dim["points"]:
                mine = sorted((r for r in dim["measurements"]
                               if (r["delta"], r["lr_exponent"]) == (p["delta"], p["lr_exponent"])),
                              key=lambda r: r["dim"])
                ax.plot([r["dim"] for r in mine], [r[quantity] for r in mine], "o-", ms=3, lw=1,
                        color=REGIME_COLORS[p["regime"]], label=_point_label(p, quantity))
            ax.set_xscale("log", base=2)
            ax.set(yscale="log", xlabel="embedding dimension D", title=_LABELS[quantity])
            ax.title.set_fontsize(8)
            ax.legend(fontsize=6)
        fig.suptitle(f"Coordinate check in D (colour: regime)\n{setting}", fontsize=9)
        fig.tight_layout()
        written.append(out / "coord_dim.png")
        save_figure(fig, written[-1], dpi=110)
        plt.close(fig)
    return written
