"""Errors against the reference, the reference's own error, and the fits of the shapes study.

**Errors.** In repetition r the reference is the mean, over its K draws, of the
largest network's h_L and f at each recorded step (:func:`reference_summary`). A
network of dimension D ≤ D_ref shares W_E, W_U rows 1..D with the reference (the
coupling), so its coordinate i and the reference's coordinate i are the same
coordinate of the joint limit: its embedding error is the RMS over samples and
coordinates i ≤ D of h_L − h̄_ref[:, :D] — h's coordinates are O(1) under ``mlu``
whatever D, so no rescaling is needed — and its output error the RMS of f − f̄_ref.
A point's error pools its R replicas over the repetitions:
√(mean of the squared errors); its bootstrap draws resample those replicas.

**The reference's own error** is the standard error of its K-draw mean, from the
spread of the draws, over the same coordinates (:func:`reference_error`). A point
enters a fit only where that error is ≤ ``ref_ratio`` × the point's error (the
rule of :func:`deepres.study.fit.fit_points`).

**Fits.** err² ≈ a²·X + b²/D, with X = D/(L·M) (the square-root form) or
X = (D/(L·M))² (the linear form), is linear in (a², b²): it is fitted by
least squares on the relative residuals of err² (:func:`fit_two_terms`), its
CIs by refitting every bootstrap draw. Along a P family the log-log slope and
its CI come from :func:`deepres.study.fit.fit_points`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from deepres.study.shapes.config import SWEEPS, ShapesConfig
from deepres.study.shared.fit import fit_points
from deepres.study.shared.sweep import derived_seed

__all__ = ["analyze_shapes", "fit_two_terms", "point_errors", "reference_error", "reference_summary"]

#: The theory's exponent of P along the balanced family.
THEORY_P_SLOPE = -1 / 6


def reference_summary(draws: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """The reference of one repetition: the mean of its draws, and the draws themselves.

    Args:
        draws: the K ≥ 2 results of the repetition's ``shapes_ref`` units, each with
            ``features`` (S, 1, N, D_ref) and ``outputs`` (S, 1, N, d_out).

    Returns:
        ``features`` (S, N, D_ref) and ``outputs`` (S, N, d_out), the means (float64);
        ``feature_draws`` (K, S, N, D_ref) and ``output_draws`` (K, S, N, d_out).

    Example:
        >>> draws = [{"features": torch.full((1, 1, 2, 3), float(k)), "outputs": torch.zeros(1, 1, 2, 1)}
        ...          for k in range(2)]
        >>> reference_summary(draws)["features"][0, 0].tolist()
        [0.5, 0.5, 0.5]
    """
    if len(draws) < 2:
        raise ValueError(f"the reference needs ≥ 2 draws (its error is their spread); got {len(draws)}")
    features = torch.stack([d["features"][:, 0].double() for d in draws])
    outputs = torch.stack([d["outputs"][:, 0].double() for d in draws])
    return {"features": features.mean(0), "outputs": outputs.mean(0), "feature_draws": features,
            "output_draws": outputs}


def reference_error(draws: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """The standard error of the K-draw mean, RMS over samples and the first ``dim`` coordinates.

    Args:
        draws: (K, S, N, C), K ≥ 2. dim: keep coordinates < dim. Default None: all.

    Returns:
        (S,): √(mean over samples, coordinates of var_k / K), var_k the unbiased variance over draws.

    Example:
        >>> reference_error(torch.tensor([[[[0.0]]], [[[2.0]]]])).tolist()   # var 2, K = 2: √(2/2)
        [1.0]
    """
    if draws.shape[0] < 2:
        raise ValueError(f"draws must hold ≥ 2 draws; got shape {tuple(draws.shape)}")
    kept = draws if dim is None else draws[..., :dim]
    return (kept.var(0, unbiased=True) / draws.shape[0]).mean((-1, -2)).sqrt()


def point_errors(result: dict[str, Any], reference: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The embedding and output errors of one unit's replicas against its repetition's reference.

    Args:
        result: a ``shapes_point`` result, ``features`` (S, R, N, D), ``outputs`` (S, R, N, d_out).
        reference: :func:`reference_summary` of the same repetition (D_ref ≥ D).

    Returns:
        ``embedding`` and ``output``, (S, R): RMS of h_L − h̄_ref[..., :D] and of f − f̄_ref.

    Example:
        >>> ref = {"features": torch.zeros(1, 2, 4, dtype=torch.float64),
        ...        "outputs": torch.zeros(1, 2, 1, dtype=torch.float64)}
        >>> out = point_errors({"features": torch.ones(1, 3, 2, 2), "outputs": torch.ones(1, 3, 2, 1)}, ref)
        >>> out["embedding"].tolist()
        [[1.0, 1.0, 1.0]]
    """
    features = result["features"].double()
    dim = features.shape[-1]
    if dim > reference["features"].shape[-1]:
        raise ValueError(f"the point's D = {dim} exceeds the reference's {reference['features'].shape[-1]}")
    dh = features - reference["features"][:, None, :, :dim]
    dy = result["outputs"].double() - reference["outputs"][:, None]
    return {"embedding": dh.pow(2).mean((-1, -2)).sqrt(), "output": dy.pow(2).mean((-1, -2)).sqrt()}


def _pooled(samples: np.ndarray, draws: int, seed: int) -> tuple[float, np.ndarray]:
    """√(mean e²) of the replica errors and ``draws`` bootstrap replicates (resampled replicas)."""
    rng = np.random.default_rng(seed)
    squares = np.asarray(samples, dtype=float) ** 2
    picks = rng.integers(0, squares.size, size=(draws, squares.size))
    return float(math.sqrt(squares.mean())), np.sqrt(squares[picks].mean(1))


def _solve(x1: np.ndarray, x2: np.ndarray, err: np.ndarray) -> tuple[float, float]:
    """Non-negative (A, B) minimizing Σ((A·x1 + B·x2)/err² − 1)²."""
    w1, w2, target = x1 / err**2, x2 / err**2, np.ones_like(err)
    design = np.stack([w1, w2], 1)
    (big_a, big_b), *_ = np.linalg.lstsq(design, target, rcond=None)
    if big_a >= 0 and big_b >= 0:
        return float(big_a), float(big_b)
    # One term only: the better of the two non-negative one-term fits.
    only_a = max(0.0, float(w1 @ target / (w1 @ w1)))
    only_b = max(0.0, float(w2 @ target / (w2 @ w2)))
    cost_a = float(((only_a * w1 - 1) ** 2).sum())
    cost_b = float(((only_b * w2 - 1) ** 2).sum())
    return (only_a, 0.0) if cost_a <= cost_b else (0.0, only_b)


def fit_two_terms(x1: Sequence[float], x2: Sequence[float], err: Sequence[float],
                  draws: np.ndarray | None = None, *, level: float = 0.95) -> dict[str, Any]:
    """Fit err ≈ √(a²·x1 + b²·x2) (a, b ≥ 0), with percentile bootstrap CIs.

    Args:
        x1, x2: the two terms' variables, (P,) (e.g. D/(L·M) and 1/D). err: the errors, (P,), > 0.
        draws: bootstrap replicates of the errors, (B, P). Default None: no CIs.
        level: CI coverage. Default 0.95.

    Returns:
        ``a``, ``b``, ``ci_a``, ``ci_b`` ([low, high] or None), ``points`` (P),
        ``rms_log_residual`` (RMS of log model − log err).

    Example:
        >>> d = np.array([4.0, 16, 64, 256, 1024]); lm = 5000.0
        >>> err = np.sqrt((0.8**2) * d / lm + 2.0**2 / d)
        >>> fit = fit_two_terms(d / lm, 1 / d, err)
        >>> round(fit["a"], 6), round(fit["b"], 6)
        (0.8, 2.0)
    """
    a1, a2, e = (np.asarray(v, dtype=float) for v in (x1, x2, err))
    if not (a1.shape == a2.shape == e.shape and e.ndim == 1 and e.size >= 2):
        raise ValueError(f"x1, x2 and err must be 1-d of the same length ≥ 2; got {a1.shape}, {a2.shape}, "
                         f"{e.shape}")
    if not (np.isfinite(e).all() and (e > 0).all()):
        raise ValueError(f"err must be finite and > 0; got {e.tolist()}")
    big_a, big_b = _solve(a1, a2, e)
    model = np.sqrt(big_a * a1 + big_b * a2)
    with np.errstate(divide="ignore"):
        residual = float(np.sqrt(np.mean((np.log(model) - np.log(e)) ** 2)))
    out: dict[str, Any] = {"a": math.sqrt(big_a), "b": math.sqrt(big_b), "ci_a": None, "ci_b": None,
                           "points": int(e.size), "rms_log_residual": residual, "level": level}
    if draws is not None:
        rows = np.asarray(draws, dtype=float)
        rows = rows[np.isfinite(rows).all(1) & (rows > 0).all(1)]
        if rows.shape[0] >= 2:
            fitted = np.array([_solve(a1, a2, row) for row in rows])
            tail = (1 - level) / 2
            out["ci_a"] = [float(v) for v in np.sqrt(np.quantile(fitted[:, 0], [tail, 1 - tail]))]
            out["ci_b"] = [float(v) for v in np.sqrt(np.quantile(fitted[:, 1], [tail, 1 - tail]))]
            out["bootstrap"] = int(rows.shape[0])
    return out


def _measure(config: ShapesConfig, results: dict[str, dict[str, Any]], references: list[dict[str, Any]],
             ) -> list[dict[str, Any]]:
    """One row per (sweep, shape, recorded step): errors, reference errors, bootstrap draws."""
    rows = []
    for sweep, shapes in config.sweep_shapes().items():
        for depth, hidden, dim in shapes:
            per_rep = [point_errors(results[f"{rep}:{depth}:{hidden}:{dim}"], references[rep])
                       for rep in range(config.repetitions)]
            for index, step in enumerate(config.record_steps):
                row: dict[str, Any] = {"sweep": sweep, "depth": depth, "hidden": hidden, "dim": dim,
                                       "params": depth * hidden * dim, "step": step}
                for space, ref_key in (("embedding", "feature_draws"), ("output", "output_draws")):
                    errors = torch.cat([e[space][index] for e in per_rep]).numpy()
                    seed = derived_seed("shapes-bootstrap", config.seed, sweep, depth, hidden, dim, step,
                                        space)
                    value, draws = _pooled(errors, config.bootstrap, seed)
                    cut = dim if space == "embedding" else None
                    ref = [float(reference_error(r[ref_key], cut)[index]) ** 2 for r in references]
                    row |= {f"err_{space}": value, f"ref_err_{space}": math.sqrt(sum(ref) / len(ref)),
                            f"_draws_{space}": draws}
                rows.append(row)
    return rows


def _fit_input(rows: list[dict[str, Any]], space: str) -> list[dict[str, Any]]:
    return [{"value": r[f"err_{space}"], "reference_error": r[f"ref_err_{space}"], "bias_se": 0.0,
             "draws": r[f"_draws_{space}"]} for r in rows]


def _kept(rows: list[dict[str, Any]], space: str, ratio: float) -> tuple[list[dict[str, Any]], list[dict]]:
    kept, excluded = [], []
    for r in rows:
        value, ref = r[f"err_{space}"], r[f"ref_err_{space}"]
        if ref <= ratio * value:
            kept.append(r)
        else:
            excluded.append({"depth": r["depth"], "hidden": r["hidden"], "dim": r["dim"], "value": value,
                             "reason": f"reference error {ref:.3g} above {ratio:.3g} × error {value:.3g}"})
    return kept, excluded


def _two_term_fit(rows: list[dict[str, Any]], space: str, form: str, config: ShapesConfig) -> dict[str, Any]:
    kept, excluded = _kept(rows, space, config.ref_ratio)
    if len(kept) < 2:
        return {"a": None, "b": None, "ci_a": None, "ci_b": None, "points": len(kept), "excluded": excluded,
                "form": form}
    ratio = np.array([r["dim"] / (r["depth"] * r["hidden"]) for r in kept])
    x1 = ratio if form == "sqrt" else ratio**2
    x2 = np.array([1.0 / r["dim"] for r in kept])
    draws = np.stack([r[f"_draws_{space}"] for r in kept], 1)
    fit = fit_two_terms(x1, x2, [r[f"err_{space}"] for r in kept], draws, level=config.level)
    return fit | {"form": form, "excluded": excluded}


def _slope_fit(rows: list[dict[str, Any]], space: str, config: ShapesConfig) -> dict[str, Any]:
    fit = fit_points([float(r["params"]) for r in rows], _fit_input(rows, space), f"err_{space}",
                     ref_ratio=config.ref_ratio, noise_ratio=0.0, level=config.level)
    ci = None if fit.ci_low is None else [fit.ci_low, fit.ci_high]
    return {"slope": fit.slope, "ci": ci, "points": len(fit.x), "prefactor": fit.prefactor, "P": fit.x,
            "err": fit.y, "excluded": fit.excluded, "theory": THEORY_P_SLOPE,
            "agrees": None if ci is None else bool(ci[0] <= THEORY_P_SLOPE <= ci[1])}


def _fits(rows: list[dict[str, Any]], config: ShapesConfig) -> dict[str, Any]:
    fixed = [r for r in rows if r["sweep"] in ("dim", "width")]
    # A shape of both sweeps is one point of the fit.
    fixed = list({(r["depth"], r["hidden"], r["dim"]): r for r in fixed}.values())
    output_sqrt = _two_term_fit(fixed, "output", "sqrt", config)
    output_linear = _two_term_fit(fixed, "output", "linear", config)
    fits: dict[str, Any] = {"embedding": _two_term_fit(fixed, "embedding", "sqrt", config),
                            "output": output_sqrt | {"linear": output_linear}}
    for space in ("embedding", "output"):
        # The reference's own 1/√D bias (D_ref against D = ∞), which its draws' spread does not see.
        b_fit = fits[space]["b"]
        fits[space]["reference_dim_bias"] = None if b_fit is None else b_fit / math.sqrt(config.reference[2])
    residuals = (output_sqrt.get("rms_log_residual"), output_linear.get("rms_log_residual"))
    if None not in residuals:
        better = "sqrt" if residuals[0] <= residuals[1] else "linear"
        fits["output"]["better_form"] = better
        fits["output"]["residual_ratio"] = max(residuals) / min(residuals) if min(residuals) > 0 else None
    for family, suffix in (("balanced", ""), ("contrast", "_contrast")):
        chosen = [r for r in rows if r["sweep"] == family]
        if chosen:
            fits[f"embedding_vs_P{suffix}"] = _slope_fit(chosen, "embedding", config)
            fits[f"output_vs_P{suffix}"] = _slope_fit(chosen, "output", config)
    return fits


def analyze_shapes(config: ShapesConfig, pairs: Iterable[tuple[dict[str, Any], dict[str, Any]]],
                   ) -> dict[str, Any]:
    """The ``shapes`` section of ``study.json`` from every (unit, result) pair of the study.

    Returns:
        ``fits`` (the last recorded step's: ``embedding``, ``output`` (with its ``linear``
        variant, ``better_form``, ``residual_ratio``), ``embedding_vs_P``, ``output_vs_P``
        and the ``_contrast`` pair), ``fits_by_step`` (every recorded step), ``measurements``
        (one row per sweep, shape and step), ``reference`` (per repetition: its shape,
        losses, own errors).
    """
    draws: dict[int, list[dict[str, Any]]] = {}
    results: dict[str, dict[str, Any]] = {}
    for unit, result in pairs:
        if unit["kind"] == "shapes_ref":
            draws.setdefault(unit["rep"], []).append(result)
        else:
            results[f"{unit['rep']}:{unit['depth']}:{unit['hidden']}:{unit['dim']}"] = result
    references = [reference_summary(draws[rep]) for rep in range(config.repetitions)]
    rows = _measure(config, results, references)
    by_step = {str(step): _fits([r for r in rows if r["step"] == step], config)
               for step in config.record_steps}
    reference_info = [{"rep": rep, "depth": config.reference[0], "hidden": config.reference[1],
                       "dim": config.reference[2], "draws": len(draws[rep]),
                       "loss": [float(torch.stack([d["losses"][s, 0] for d in draws[rep]]).mean())
                                for s in (0, *config.record_steps)],
                       "own_error_embedding": reference_error(references[rep]["feature_draws"]).tolist(),
                       "own_error_output": reference_error(references[rep]["output_draws"]).tolist()}
                      for rep in range(config.repetitions)]
    measurements = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    return {"fits": by_step[str(config.record_steps[-1])], "fits_by_step": by_step,
            "measurements": measurements, "reference": reference_info, "sweeps": list(SWEEPS),
            "sweep_shapes": {k: [list(s) for s in v] for k, v in config.sweep_shapes().items()}}
