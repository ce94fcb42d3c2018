"""From stored unit results to measurements, fitted rates and checks.

:func:`analyze` reads every unit of a :class:`~deepres.study.convergence.presets.StudyConfig`
from its :class:`~deepres.study.shared.store.ResultStore` and returns a JSON-able dict:

* ``limits``: per group (seed, D, α, η, steps), the limit's reference error at each
  recorded step: ``particle_error`` (standard error of the mean of the
  ``limit_sets`` independent particle sets, which is the limit used),
  ``grid_error`` (RMS difference between set 0 on the N-step grid and the same
  particles on N/2 steps: an upper estimate of the grid error), and
  ``reference_error`` = √(particle² + grid²); in output and embedding space.
* ``measurements``: one row per (unit, recorded step, space) with the error
  decomposition of :func:`deepres.study.convergence.compare.decompose` and the reference error.
* ``fits``: log-log slopes with bootstrap CIs at the last recorded step (the D rate
  also at initialization): in L, M and D per group, and ``fluctuation_vs_alpha`` along
  the α axis.
* ``alpha_axis``: the α axis's fluctuations per α, with the local slopes between
  neighbouring α (where the α rate holds).
* ``lazy``: the α sweep (:mod:`deepres.study.convergence.lazy_analysis`).
* ``checks``: the expected rates, each with its measured value and whether it holds.

The D rate is reported as measured, against the bound and with no theoretical
slope: see :data:`BOUNDS`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from deepres.study.convergence.compare import decompose, rms
from deepres.study.convergence.lazy_analysis import analyze_lazy
from deepres.study.convergence.presets import StudyConfig
from deepres.study.shared.fit import SlopeFit, fit_points
from deepres.study.shared.store import ResultStore
from deepres.study.shared.sweep import derived_seed

__all__ = ["BOUNDS", "THEORY", "analyze", "bootstrap_errors"]

#: Theoretical slopes; None where the theory predicts no single power.
THEORY: dict[str, float | None] = {
    "fluctuation_vs_depth": -0.5,
    "fluctuation_vs_width": -0.5,
    "fluctuation_vs_alpha": 1.0,  # over the range where the bound's α term dominates
    "fluctuation_vs_dim": None,  # only a bound: see BOUNDS
    "bias_vs_depth": -1.0,
    "rms_vs_depth": None,
    "weight_movement_vs_alpha": -1.0,
    "lazy_ode_distance_vs_alpha": -2.0,  # in its asymptotic range
}

#: Upper bounds on slopes that no theory pins down. The D rate: √D/√(LM) bounds the output
#: error (proved for fixed D, Chizat 2025) and √(D/(LM)) the embedding error in per-coordinate
#: RMS (Chaintron–Chizat–Maass 2026, there called empirically tight in embedding space); in the
#: norm of h, √D times the per-coordinate RMS, the same bound reads +1.
BOUNDS: dict[tuple[str, str, str], float] = {
    ("fluctuation_vs_dim", "output", "coordinate"): 0.5,
    ("fluctuation_vs_dim", "embedding", "coordinate"): 0.5,
    ("fluctuation_vs_dim", "embedding", "norm"): 1.0,
}

_SPACES = ("output", "embedding")
_GROUP_KEYS = ("seed", "dim", "alpha", "eta", "steps")


def bootstrap_errors(values: torch.Tensor, target: torch.Tensor, *, valid: torch.Tensor, antithetic: bool,
                     draws: int, seed: int) -> dict[str, np.ndarray]:
    """Bootstrap replicates of the error decomposition, resampling independent units.

    Each draw resamples, with replacement, the independent units (replicas, or
    antithetic pairs kept whole) and recomputes :func:`deepres.study.convergence.compare.decompose`
    on them. A draw is summarized by how many times it took each unit, w (B, units),
    and every statistic is a moment linear in w, so all draws cost a few matrix
    products instead of B copies of the replicas.

    Args:
        values: (R, N, d). target: (N, d). valid: (R,) bool. antithetic: resample
            pairs (replicas 2i, 2i+1 together). draws: B. seed: of the resampling.

    Returns:
        ``{"rms", "bias", "bias_debiased", "fluctuation"}``, each (B,).
    """
    ok = valid.clone()
    if antithetic:
        ok = (ok[0::2] & ok[1::2]).repeat_interleave(2)
    vals = values[ok].double()
    group = 2 if antithetic else 1
    units = vals.reshape(vals.shape[0] // group, group, -1)  # (units, group, N·d)
    count = units.shape[0]
    size = count * group  # replicas in every draw
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(count, (draws, count), generator=gen)
    weights = torch.zeros(draws, count, dtype=torch.float64).scatter_add_(
        1, idx, torch.ones(draws, count, dtype=torch.float64))
    centered = units - target.double().reshape(1, 1, -1)  # errors to the target
    unit_sum = centered.sum(1)  # (units, N·d)
    mean = weights @ unit_sum / size  # (B, N·d): replica mean minus target
    second = weights @ centered.pow(2).sum(1) / size  # mean of squared errors
    err2 = second.mean(1)
    bias2 = mean.pow(2).mean(1)
    # Unbiased variance across the draw's replicas, and across its unit means.
    fluct2 = ((second - mean.pow(2)) * size / (size - 1)).mean(1)
    unit_mean = unit_sum / group
    unit_var = weights @ unit_mean.pow(2) / count - (weights @ unit_mean / count).pow(2)
    unit_var = unit_var * count / (count - 1)
    se2 = unit_var.mean(1) / count
    return {"rms": err2.sqrt().numpy(), "bias": bias2.sqrt().numpy(),
            "bias_debiased": (bias2 - se2).clamp_min(0).sqrt().numpy(),
            "fluctuation": fluct2.clamp_min(0).sqrt().numpy()}


def _limit_target(config: StudyConfig, store: ResultStore, group: dict[str, Any]) -> dict[str, Any]:
    main = store.load(config.limit_unit(group))
    check = store.load(config.limit_unit(group, grid_check=True))
    keep = ~main["nonfinite"].bool()
    out: dict[str, Any] = {"nonfinite_sets": int((~keep).sum()), "steps": group["record_steps"]}
    for space, key in (("output", "outputs"), ("embedding", "features")):
        sets = main[key][:, keep].double()  # (S, sets, N, d)
        target = sets.mean(1)
        count = sets.shape[1]
        particle = [math.sqrt(sets[s].var(0, unbiased=True).mean().item() / count) if count > 1 else math.nan
                    for s in range(sets.shape[0])]
        grid = [rms(main[key][s, 0].double() - check[key][s, 0].double()) for s in range(sets.shape[0])]
        out[space] = {
            "target": target,
            "particle_error": particle,
            "grid_error": grid,
            "reference_error": [math.hypot(p, g) for p, g in zip(particle, grid, strict=True)],
            "scale": [rms(target[s]) for s in range(target.shape[0])],
        }
    out["final_loss_mean"] = float(main["losses"][-1][keep].mean())
    out["seconds"] = float(main["seconds"] + check["seconds"])
    return out


#: The rule that keeps or leaves out each point of a fit (kept under its old name).
_fit = fit_points


def analyze(config: StudyConfig, store: ResultStore) -> dict[str, Any]:
    """Measurements, fits, α axis, lazy sweep and checks of a finished study (see the module docstring)."""
    measurements: list[dict[str, Any]] = []
    limits: list[dict[str, Any]] = []
    fits: list[dict[str, Any]] = []
    final_points: dict[tuple, dict[str, Any]] = {}
    init_points: dict[tuple, dict[str, Any]] = {}
    for group in config.groups():
        limit = _limit_target(config, store, group)
        gkey = {k: group[k] for k in _GROUP_KEYS}
        summary = {"record_steps": group["record_steps"], "nonfinite_sets": limit["nonfinite_sets"],
                   "final_loss_mean": limit["final_loss_mean"], "seconds": limit["seconds"]}
        spaces = {space: {k: v for k, v in limit[space].items() if k != "target"} for space in _SPACES}
        limits.append(gkey | summary | spaces)
        last = len(group["record_steps"]) - 1
        for hidden in config.widths:
            for depth in config.depths:
                unit = config.resnet_unit(group, depth, hidden)
                result = store.load(unit)
                valid = ~result["nonfinite"].bool()
                base = gkey | {"depth": depth, "hidden": hidden, "replicas": config.replicas,
                               "nonfinite": int((~valid).sum()), "seconds": float(result["seconds"]),
                               "weight_movement": float(result["weight_movement"][valid].mean())}
                for space, key in (("output", "outputs"), ("embedding", "features")):
                    lim = limit[space]
                    for s, step in enumerate(group["record_steps"]):
                        parts = decompose(result[key][s], lim["target"][s], valid=valid,
                                          antithetic=config.antithetic)
                        row = base | {"space": space, "step": step, **parts,
                                      "reference_error": lim["reference_error"][s],
                                      "particle_error": lim["particle_error"][s],
                                      "grid_error": lim["grid_error"][s],
                                      "loss": float(result["losses"][step][valid].mean())}
                        measurements.append(row)
                        point_key = (space, *gkey.values(), depth, hidden)
                        if s == last:
                            draws = bootstrap_errors(result[key][s], lim["target"][s], valid=valid,
                                                     antithetic=config.antithetic, draws=config.bootstrap,
                                                     seed=derived_seed("bootstrap", unit, space))
                            final_points[point_key] = {"row": row, "draws": draws}
                        elif s == 0 and len(config.dims) >= 2:
                            # The D rate is also fitted at initialization, where training has not
                            # yet changed it (own draws: the last step's stay as they were).
                            draws = bootstrap_errors(result[key][s], lim["target"][s], valid=valid,
                                                     antithetic=config.antithetic, draws=config.bootstrap,
                                                     seed=derived_seed("bootstrap", unit, space, "init"))
                            init_points[point_key] = {"row": row, "draws": draws}
        for space in _SPACES:
            fits.extend(_group_fits(config, gkey, space, final_points))
    fits.extend(_dim_fits(config, init_points, step="init"))
    fits.extend(_dim_fits(config, final_points, step="last"))
    alpha_axis = _alpha_axis(config, store)
    fits.extend(alpha_axis.pop("fits"))
    lazy = analyze_lazy(config, store)
    result = {"limits": limits, "measurements": measurements, "fits": fits, "alpha_axis": alpha_axis,
              "lazy": lazy}
    result["checks"] = _checks(config, result)
    return result


def _point(entry: dict[str, Any], stat: str, scale: float = 1.0) -> dict[str, Any]:
    row = entry["row"]
    return {"value": row[stat] * scale, "reference_error": row["reference_error"] * scale,
            "bias_se": row["bias_se"] * scale, "draws": entry["draws"][stat] * scale}


def _record(name: str, stat: str, space: str, fixed: dict[str, Any], fit: SlopeFit, *,
            step: int | None = None, **extra: Any) -> dict[str, Any]:
    """A fit's report entry; ``step`` is the GD step fitted (the last recorded one by default)."""
    theory = THEORY[name]
    covered = None if theory is None or fit.slope is None else fit.covers(theory)
    return {"name": name, "statistic": stat, "space": space, "fixed": fixed, "step": step, "theory": theory,
            **extra, **fit.as_dict(), "theory_in_ci": covered}


def _group_fits(config: StudyConfig, gkey: dict[str, Any], space: str,
                points: dict[tuple, dict[str, Any]]) -> list[dict[str, Any]]:
    opts = {"ref_ratio": config.ref_ratio, "noise_ratio": config.noise_ratio, "level": config.level}
    out = []
    key = (space, *gkey.values())
    if len(config.depths) >= 2:
        for hidden in config.widths:
            entries = [points[(*key, d, hidden)] for d in config.depths]
            for name, stat in (("fluctuation_vs_depth", "fluctuation"), ("bias_vs_depth", "bias_debiased"),
                               ("rms_vs_depth", "rms")):
                fit = _fit([float(d) for d in config.depths], [_point(e, stat) for e in entries], stat,
                           **opts)
                out.append(_record(name, stat, space, gkey | {"hidden": hidden}, fit, step=gkey["steps"]))
    if len(config.widths) >= 2:
        for depth in config.depths:
            entries = [points[(*key, depth, m)] for m in config.widths]
            fit = _fit([float(m) for m in config.widths], [_point(e, "fluctuation") for e in entries],
                       "fluctuation", **opts)
            out.append(_record("fluctuation_vs_width", "fluctuation", space, gkey | {"depth": depth}, fit,
                               step=gkey["steps"]))
    return out


def _dim_fits(config: StudyConfig, points: dict[tuple, dict[str, Any]], *, step: str) -> list[dict[str, Any]]:
    """The fluctuation's rate in D, per (L, M, ...), in each space and normalization, against the bound.

    ``coordinate``: the RMS over samples and coordinates (as every other error here);
    ``norm`` (embedding only): the RMS over samples of ‖h_L − h(1)‖, √D times the former.
    """
    if len(config.dims) < 2:
        return []
    opts = {"ref_ratio": config.ref_ratio, "noise_ratio": config.noise_ratio, "level": config.level}
    dims = [float(d) for d in config.dims]
    out = []
    for space in _SPACES:
        for seed in config.seeds:
            for alpha in config.alphas:
                for eta in config.etas:
                    for steps in config.steps:
                        for depth in config.depths:
                            for hidden in config.widths:
                                entries = [points[(space, seed, d, float(alpha), float(eta), steps, depth,
                                                   hidden)] for d in config.dims]
                                fixed = {"seed": seed, "alpha": float(alpha), "eta": float(eta),
                                         "steps": steps, "depth": depth, "hidden": hidden}
                                norms = ("coordinate", "norm") if space == "embedding" else ("coordinate",)
                                for norm in norms:
                                    scales = [math.sqrt(d) if norm == "norm" else 1.0 for d in dims]
                                    fit = _fit(dims, [_point(e, "fluctuation", c) for e, c in
                                                      zip(entries, scales, strict=True)], "fluctuation",
                                               **opts)
                                    bound = BOUNDS[("fluctuation_vs_dim", space, norm)]
                                    within = None if fit.ci_low is None else fit.ci_low <= bound
                                    out.append(_record("fluctuation_vs_dim", "fluctuation", space, fixed, fit,
                                                       step=0 if step == "init" else steps,
                                                       normalization=norm, bound=bound,
                                                       within_bound=within))
    return out


def _alpha_axis(config: StudyConfig, store: ResultStore) -> dict[str, Any]:
    """The fluctuation along the α axis: per-α points, local slopes, and the fit over ``alpha_fit``.

    The fluctuation is the spread of the replicas around their own mean: it does not
    involve the limit, whose reference error is therefore not a criterion here.
    """
    if not config.alpha_axis:
        return {"points": [], "fits": [], "range": None}
    alphas = sorted(float(a) for a in config.alpha_axis)
    depth, hidden = config.alpha_axis_depth, config.alpha_axis_hidden
    low, high = (float(v) for v in config.alpha_fit)
    rows: list[dict[str, Any]] = []
    fits: list[dict[str, Any]] = []
    opts = {"ref_ratio": 1.0, "noise_ratio": 0.0, "level": config.level}
    for seed, dim, eta, steps in config._others():
        fixed = {"seed": seed, "dim": dim, "eta": float(eta), "steps": steps, "depth": depth,
                 "hidden": hidden}
        entries: dict[str, list[dict[str, Any]]] = {space: [] for space in _SPACES}
        previous: dict[str, tuple[float, float]] = {}
        for alpha in alphas:
            unit = config.resnet_unit(config._base(seed, dim, alpha, eta, steps), depth, hidden)
            result = store.load(unit)
            valid = ~result["nonfinite"].bool()
            for space, key in (("output", "outputs"), ("embedding", "features")):
                values = result[key]
                own_mean = values[-1][valid].double().mean(0)
                init = decompose(values[0], values[0][valid].double().mean(0), valid=valid,
                                 antithetic=config.antithetic)["fluctuation"]
                final = decompose(values[-1], own_mean, valid=valid,
                                  antithetic=config.antithetic)["fluctuation"]
                local = None
                if space in previous and previous[space][1] > 0 and final > 0:
                    local = math.log(final / previous[space][1]) / math.log(alpha / previous[space][0])
                previous[space] = (alpha, final)
                rows.append(fixed | {"alpha": alpha, "space": space, "fluctuation_init": init,
                                     "fluctuation": final, "local_slope": local,
                                     "nonfinite": int((~valid).sum()),
                                     "weight_movement": float(result["weight_movement"][valid].mean()),
                                     "loss": float(result["losses"][-1][valid].mean())})
                draws = bootstrap_errors(values[-1], own_mean, valid=valid, antithetic=config.antithetic,
                                         draws=config.bootstrap, seed=derived_seed("bootstrap", unit, space))
                entries[space].append({"value": final, "reference_error": 0.0, "bias_se": 0.0,
                                       "draws": draws["fluctuation"]})
        for space in _SPACES:
            fit = _fit(alphas, entries[space], "fluctuation", x_range=(low, high), **opts)
            fits.append(_record("fluctuation_vs_alpha", "fluctuation", space, fixed, fit,
                                step=steps, range=[low, high]))
    return {"points": rows, "fits": fits, "range": [low, high]}


#: Why a slope check uses a band around the theory, not the CI: the CI says how precisely the
#: replicas pin the slope of *these* L (or M, α) values; the theory is the asymptotic rate, which
#: a finite range misses by its curvature (e.g. −0.516 [−0.524, −0.508] against −0.5 at M = 1),
#: and tighter CIs (more replicas) would fail a CI criterion ever more often with the same data.
BAND_CRITERION = ("band: the slope lies within the band around the theory (the asymptotic rate; the "
                  "CI is how precisely the replicas pin the slope over this finite range, which "
                  "curvature can move off the theory by more than the CI's width); theory_in_ci reports "
                  "the stricter criterion")


def _slope_check(check: str, f: dict[str, Any], holds: bool) -> dict[str, Any]:
    return {"check": check, "value": f["slope"], "ci": [f["ci_low"], f["ci_high"]], "holds": holds,
            "criterion": BAND_CRITERION, "theory": f["theory"], "theory_in_ci": f.get("theory_in_ci")}


def _checks(config: StudyConfig, result: dict[str, Any]) -> list[dict[str, Any]]:
    """The rates a study is expected to show, each measured (output space, last step).

    ``holds`` is each check's own criterion, named in its ``criterion``: slopes
    within a band around the theory (:data:`BAND_CRITERION`; ``theory_in_ci`` beside
    it), the reference error against a third of the errors.
    """
    checks = []
    fits = [f for f in result["fits"] if f["space"] == "output"]
    for f in fits:
        if f["slope"] is None:
            continue
        if f["name"] == "fluctuation_vs_depth" and f["fixed"]["hidden"] >= 4:
            checks.append(_slope_check(f"fluctuation slope in L at M={f['fixed']['hidden']} in [-0.6, -0.4]",
                                       f, -0.6 <= f["slope"] <= -0.4))
        elif f["name"] == "fluctuation_vs_width":
            checks.append(_slope_check(f"fluctuation slope in M at L={f['fixed']['depth']} in [-0.6, -0.4]",
                                       f, -0.6 <= f["slope"] <= -0.4))
        elif f["name"] == "bias_vs_depth":
            checks.append(_slope_check(f"bias slope in L at M={f['fixed']['hidden']} below -0.6", f,
                                       f["slope"] < -0.6))
        elif f["name"] == "fluctuation_vs_alpha":
            low, high = f["range"]
            checks.append(_slope_check(f"fluctuation slope in α at L={f['fixed']['depth']}, "
                                       f"M={f['fixed']['hidden']} (α in [{low:g}, {high:g}]) in [0.6, 1.3]",
                                       f, 0.6 <= f["slope"] <= 1.3))
    for f in result["lazy"]["fits"]:
        if f["name"] == "lazy_ode_distance_vs_alpha" and f["slope"] is not None:
            checks.append(_slope_check("lazy-ODE distance slope in α in [-2.4, -1.6]", f,
                                       -2.4 <= f["slope"] <= -1.6))
    for lin in result["lazy"]["linearization"]:
        if lin["spread"] is not None:
            checks.append({"check": f"linearization distance varies by at most 0.01 across α ≥ "
                                    f"{lin['from_alpha']:g}", "value": lin["spread"],
                           "holds": lin["spread"] <= 0.01, "criterion": "spread ≤ 0.01"})
    # The limit's reference error matters for the fits that compare with it: the last step's fits
    # of each group against the limit of that group (its seed, D, α, η, steps); not the α axis,
    # which measures spreads only, nor the D rate, whose points come from several groups (each
    # point of it passed its own group's test).
    with_limit = [f for f in fits if f["name"] not in ("fluctuation_vs_alpha", "fluctuation_vs_dim")]
    for lim in result["limits"]:
        group = {k: lim[k] for k in _GROUP_KEYS}
        fitted = [y for f in with_limit if f["slope"] is not None
                  and all(f["fixed"].get(k, v) == v for k, v in group.items()) for y in f["y"]]
        if not fitted:
            continue
        reference = lim["output"]["reference_error"][-1]
        smallest = min(fitted)
        where = "" if len(result["limits"]) == 1 else f" (D={group['dim']}, α={group['alpha']:g})"
        checks.append({"check": f"reference error of the limit under a third of the smallest fitted "
                                f"error{where}", "value": reference, "smallest_fitted_error": smallest,
                       "ratio": reference / smallest, "holds": reference < smallest / 3,
                       "criterion": "reference error < smallest fitted error / 3"})
    # The fits are made at the last recorded step: that is where the limit's error matters.
    reference = max((lim["output"]["reference_error"][-1] for lim in result["limits"]), default=math.nan)
    grid_errors = [r[s] for r in result["measurements"] if r["space"] == "output"
                   for s in ("fluctuation", "bias_debiased") if r["step"] == r["steps"]]
    if grid_errors:
        positive = [e for e in grid_errors if e > 0]
        checks.append({"check": "reference error vs the smallest error on the whole grid (informative)",
                       "value": reference, "smallest_error": min(positive) if positive else None,
                       "holds": bool(positive) and reference < min(positive) / 3,
                       "criterion": "informative: reference error < smallest error / 3"})
    return checks
