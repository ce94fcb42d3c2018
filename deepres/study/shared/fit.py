"""Rates: log-log least-squares slopes with bootstrap confidence intervals.

A rate ``error ≈ C · x^p`` is fitted by ordinary least squares of log(error) on
log(x). Its confidence interval comes from a bootstrap over the replicas: every
bootstrap draw resamples, independently at every point, the replicas (or
antithetic pairs) that produced that point's error, recomputes the error, and
refits; the CI is the percentile interval of the refitted slopes. It covers the
replica-sampling uncertainty only (not the limit's own error, which the studies
report separately and keep well below the errors fitted).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["SlopeFit", "bootstrap_slope", "fit_kept", "fit_points", "loglog_fit"]


def loglog_fit(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Least-squares fit of log y = p·log x + log C.

    Args:
        x, y: positive values, same length ≥ 2 (x not all equal).

    Returns:
        (slope p, prefactor C).

    Example:
        >>> loglog_fit([1, 2, 4], [1, 0.5, 0.25])
        (-1.0, 1.0)
    """
    xa = np.asarray(x, dtype=float)
    ya = np.asarray(y, dtype=float)
    if xa.shape != ya.shape or xa.ndim != 1 or xa.size < 2:
        raise ValueError(f"x and y must be 1-d of the same length ≥ 2; got {xa.shape} and {ya.shape}")
    if not (np.isfinite(xa).all() and np.isfinite(ya).all() and (xa > 0).all() and (ya > 0).all()):
        raise ValueError(f"x and y must be positive and finite; got x={xa.tolist()}, y={ya.tolist()}")
    lx, ly = np.log(xa), np.log(ya)
    if np.ptp(lx) == 0:
        raise ValueError("x must take at least two distinct values")
    slope, intercept = np.polyfit(lx, ly, 1)
    return round(float(slope), 12), round(float(math.exp(intercept)), 12)


@dataclass
class SlopeFit:
    """A fitted rate with its bootstrap confidence interval.

    Attributes:
        slope: the least-squares slope p (None when fewer than 2 points were usable).
        prefactor: C in error ≈ C·x^p.
        ci_low, ci_high: the bootstrap percentile interval of the slope (level ``level``).
        level: the CI's coverage, e.g. 0.95.
        x, y: the points fitted. excluded: points left out, each with the reason.
        bootstrap: number of bootstrap draws used.
    """

    slope: float | None
    prefactor: float | None
    ci_low: float | None
    ci_high: float | None
    level: float
    x: list[float]
    y: list[float]
    excluded: list[dict] = field(default_factory=list)
    bootstrap: int = 0

    def covers(self, value: float) -> bool:
        """Whether ``value`` lies in the confidence interval."""
        return self.ci_low is not None and self.ci_high is not None and self.ci_low <= value <= self.ci_high

    def as_dict(self) -> dict:
        return {"slope": self.slope, "prefactor": self.prefactor, "ci_low": self.ci_low,
                "ci_high": self.ci_high, "level": self.level, "points": len(self.x), "x": self.x,
                "y": self.y, "excluded": self.excluded, "bootstrap": self.bootstrap}


def bootstrap_slope(x: Sequence[float], y: Sequence[float], draws: Sequence[Sequence[float]] | np.ndarray, *,
                    level: float = 0.95) -> SlopeFit:
    """Fit a log-log slope and its percentile bootstrap CI.

    Args:
        x: the abscissae, (P,). y: the errors at those points, (P,).
        draws: bootstrap replicates of the errors, (B, P): row b holds the errors
            recomputed from resampled replicas at every point. Rows with a
            non-positive or non-finite entry are dropped (counted in ``bootstrap``).
        level: coverage of the interval. Default 0.95.

    Returns:
        A :class:`SlopeFit`.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> xs = np.array([4.0, 8, 16, 32]); ys = xs**-0.5
        >>> fit = bootstrap_slope(xs, ys, ys * np.exp(0.01 * rng.standard_normal((200, 4))))
        >>> round(fit.slope, 6), fit.covers(-0.5)
        (-0.5, True)
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1); got {level!r}")
    slope, prefactor = loglog_fit(x, y)
    lx = np.log(np.asarray(x, dtype=float))
    boot = np.asarray(draws, dtype=float)
    if boot.ndim != 2 or boot.shape[1] != lx.size:
        raise ValueError(f"draws must have shape (B, {lx.size}); got {boot.shape}")
    ok = np.isfinite(boot).all(1) & (boot > 0).all(1)
    boot = boot[ok]
    low = high = None
    if boot.shape[0] >= 2:
        centered = lx - lx.mean()
        # Slope of every row at once: Σ (lx − mean) log y_b / Σ (lx − mean)².
        slopes = np.log(boot) @ centered / (centered @ centered)
        tail = (1 - level) / 2
        low, high = (float(v) for v in np.quantile(slopes, [tail, 1 - tail]))
    return SlopeFit(slope, prefactor, low, high, level, [float(v) for v in x], [float(v) for v in y],
                    bootstrap=int(boot.shape[0]))


def fit_points(x: Sequence[float], points: Sequence[dict[str, Any]], stat: str, *, ref_ratio: float,
               noise_ratio: float, level: float, x_range: tuple[float, float] | None = None) -> SlopeFit:
    """Fit ``stat`` over the points that qualify; list the others in ``excluded`` with the reason.

    A point is left out when its value is not finite and positive, when its
    ``reference_error`` exceeds ``ref_ratio`` × its value, when (for
    ``"bias_debiased"``) it is under ``noise_ratio`` × its ``bias_se``, or when its x
    lies outside ``x_range``.

    Args:
        x: abscissae, (P,). points: per x, a dict with ``value``, ``reference_error``,
            ``bias_se`` and ``draws`` (its bootstrap replicates, (B,)). stat: the
            statistic's name (for the bias rule and the messages).
        ref_ratio, noise_ratio: the thresholds above. level: CI coverage.
        x_range: (low, high), inclusive. Default None: every x.

    Returns:
        A :class:`SlopeFit` (slope None when fewer than 2 points qualify).

    Example:
        >>> pts = [{"value": v, "reference_error": 0.0, "bias_se": 0.0, "draws": np.full(9, v)}
        ...        for v in (1.0, 0.5, 0.25, 0.2)]
        >>> fit = fit_points([1.0, 2.0, 4.0, 8.0], pts, "fluctuation", ref_ratio=1 / 3, noise_ratio=3,
        ...                  level=0.95, x_range=(1, 4))
        >>> round(fit.slope, 6), fit.excluded[0]["x"]
        (-1.0, 8.0)
    """
    kept_x: list[float] = []
    kept: list[dict[str, Any]] = []
    excluded = []
    for xi, point in zip(x, points, strict=True):
        value = point["value"]
        reason = None
        if x_range is not None and not x_range[0] <= xi <= x_range[1]:
            reason = f"x = {xi:g} outside the fitted range [{x_range[0]:g}, {x_range[1]:g}]"
        elif not (isinstance(value, float) and math.isfinite(value) and value > 0):
            reason = "no finite positive value"
        elif point["reference_error"] > ref_ratio * value:
            reason = (f"reference error {point['reference_error']:.3g} above {ref_ratio:.3g} × "
                      f"{stat} {value:.3g}")
        elif stat == "bias_debiased" and value < noise_ratio * point["bias_se"]:
            reason = (f"bias {value:.3g} below {noise_ratio:g} × its replica standard error "
                      f"{point['bias_se']:.3g}")
        if reason is None:
            kept_x.append(float(xi))
            kept.append(point)
        else:
            excluded.append({"x": xi, "value": value, "reason": reason})
    return fit_kept(kept_x, [p["value"] for p in kept], [p["draws"] for p in kept], excluded=excluded,
                    level=level)


def fit_kept(x: Sequence[float], y: Sequence[float], draws: Sequence[np.ndarray], *,
             excluded: list[dict[str, Any]], level: float) -> SlopeFit:
    """The slope of the points a study kept, with the ones it left out listed in ``excluded``.

    The last step of every fit of the studies (:func:`fit_points`, the phase study's
    exponents), after each has chosen its points by its own rules.

    Args:
        x: the kept abscissae, (P,). y: their values, (P,). draws: per point, its bootstrap
            replicates, P arrays of shape (B,). excluded: the points left out, with reasons.
        level: CI coverage.

    Returns:
        A :class:`SlopeFit`; slope None when fewer than 2 distinct x are kept.

    Example:
        >>> fit = fit_kept([1.0, 2.0], [1.0, 0.5], [np.full(9, 1.0), np.full(9, 0.5)], excluded=[],
        ...                level=0.95)
        >>> round(fit.slope, 6), fit_kept([1.0], [1.0], [np.ones(9)], excluded=[], level=0.95).slope
        (-1.0, None)
    """
    if len(set(x)) < 2:
        fit = SlopeFit(None, None, None, None, level, list(x), list(y))
    else:
        fit = bootstrap_slope(x, y, np.stack(list(draws), axis=1), level=level)
    fit.excluded = excluded
    return fit
