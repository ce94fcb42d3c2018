"""PNG figures of the shapes study (matplotlib, Agg backend, imported lazily).

* ``shapes_embedding.png`` and ``shapes_output.png``: err_h (err_y) against D at
  fixed (L, M), against M at fixed (L, D), and against P along the balanced and
  the contrast families, with the fitted two-term curves, the fitted P power
  law, the P^(−1/6) guide line, and the reference's own error (dotted); points
  left out of the fits by the reference rule are hollow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from deepres.study.shared.report import require_matplotlib, save_figure

__all__ = ["plot_shapes"]

_SPACES = {"embedding": "embedding error err_h = RMS(h_L − h_ref)",
           "output": "output error err_y = RMS(f − f_ref)"}


def _model(fit: dict[str, Any], depth: float, hidden: np.ndarray, dim: np.ndarray) -> np.ndarray | None:
    if fit.get("a") is None:
        return None
    ratio = dim / (depth * hidden)
    first = ratio if fit.get("form", "sqrt") == "sqrt" else ratio**2
    return np.sqrt(fit["a"] ** 2 * first + fit["b"] ** 2 / dim)


def _variants(fit: dict[str, Any]) -> list[tuple[dict[str, Any], str, str]]:
    return [(fit, "-", "fit"), (fit.get("linear", {}), "--", "fit, linear")]


def _points(ax: Any, rows: list[dict[str, Any]], x: str, space: str, ratio: float, color: str,
            label: str) -> None:
    xs = np.array([r[x] for r in rows], dtype=float)
    ys = np.array([r[f"err_{space}"] for r in rows])
    ref = np.array([r[f"ref_err_{space}"] for r in rows])
    kept = ref <= ratio * ys
    ax.loglog(xs[kept], ys[kept], "o", color=color, label=label)
    ax.loglog(xs[~kept], ys[~kept], "o", mfc="none", color=color)
    ax.loglog(xs, ref, ":", color=color, alpha=0.7)


def plot_shapes(report: dict[str, Any], out: str | Path) -> list[Path]:
    """Write the two figures into ``out``; returns their paths."""
    plt = require_matplotlib()
    shapes, config = report["shapes"], report["config"]
    step = config["record_steps"][-1]
    rows = [r for r in shapes["measurements"] if r["step"] == step]
    ratio = config["ref_ratio"]
    written = []
    for space, ylabel in _SPACES.items():
        fits = shapes["fits"]
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
        dim_rows = [r for r in rows if r["sweep"] == "dim"]
        if dim_rows:
            depth, hidden = config["dim_fixed"]
            _points(axes[0], dim_rows, "dim", space, ratio, "tab:blue", f"L = {depth}, M = {hidden}")
            grid = np.geomspace(min(r["dim"] for r in dim_rows), max(r["dim"] for r in dim_rows), 100)
            for fit, style, name in _variants(fits[space]):
                curve = _model(fit, depth, np.full_like(grid, hidden), grid)
                if curve is not None:
                    axes[0].loglog(grid, curve, style, color="black", lw=1, label=name)
        axes[0].set_xlabel("embedding dimension D")
        width_rows = [r for r in rows if r["sweep"] == "width"]
        if width_rows:
            depth, dim = config["width_fixed"]
            _points(axes[1], width_rows, "hidden", space, ratio, "tab:green", f"L = {depth}, D = {dim}")
            widths = [r["hidden"] for r in width_rows]
            grid = np.geomspace(min(widths), max(widths), 100)
            for fit, style, name in _variants(fits[space]):
                curve = _model(fit, depth, grid, np.full_like(grid, dim))
                if curve is not None:
                    axes[1].loglog(grid, curve, style, color="black", lw=1, label=name)
        axes[1].set_xlabel("hidden width M")
        for family, color in (("balanced", "tab:red"), ("contrast", "tab:gray")):
            family_rows = [r for r in rows if r["sweep"] == family]
            if not family_rows:
                continue
            base = config["balanced_base"]
            label = (f"balanced: L={base[0]}s, M={base[1]}s³, D={base[2]}s²" if family == "balanced"
                     else f"contrast: same L, M, D = {config['contrast_dim']}")
            _points(axes[2], family_rows, "params", space, ratio, color, label)
            suffix = "" if family == "balanced" else "_contrast"
            fit = fits.get(f"{space}_vs_P{suffix}", {})
            if fit.get("slope") is not None:
                grid = np.geomspace(min(fit["P"]), max(fit["P"]), 50)
                axes[2].loglog(grid, fit["prefactor"] * grid ** fit["slope"], "-", color=color, lw=1,
                               label=f"slope {fit['slope']:+.3f}")
            if family == "balanced":
                ps = np.array([r["params"] for r in family_rows], dtype=float)
                ys = np.array([r[f"err_{space}"] for r in family_rows])
                anchor = float(np.exp(np.mean(np.log(ys) + np.log(ps) / 6)))
                grid = np.geomspace(ps.min(), ps.max(), 50)
                axes[2].loglog(grid, anchor * grid ** (-1 / 6), "--", color="black", lw=1, label="P^(−1/6)")
        axes[2].set_xlabel("parameter budget P = L·M·D")
        for ax in axes:
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(f"shapes study, step {step}: hollow = left out by the reference rule, "
                     "dotted = the reference's own error")
        fig.tight_layout()
        path = Path(out) / f"shapes_{space}.png"
        save_figure(fig, path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
