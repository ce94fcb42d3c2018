"""Phase study analysis: exponents in L (or D) with bootstrap CIs, and the classification rule.

For every point of a diagram and every measured quantity, the mean over valid
replicas at each depth L (or dimension D) is fitted by ``mean ≈ C·x^p`` in log-log
(:func:`deepres.study.shared.fit.bootstrap_slope`); the CI resamples the replicas at every
x independently.

**Classification rule** (:func:`classify`), from three first-step exponents:

* ``output``: the output movement per step (``output_step``);
* ``unit``: the unit movement per step: the relative weight movement
  ‖Δθ‖/‖θ_0‖ (``weight_step``) in the depth diagram, the unit's own
  pre-activation change (``preact_step``) in the dimension diagram (there a
  weight's relative Frobenius movement carries a 1/√D from the single direction
  it moves in, whatever the regime);
* ``init``: the fluctuation at initialization, of h (``init_fluct_h``) in the depth
  diagram, of the output f (``init_fluct_f``) in the dimension diagram (at fixed
  L, M, the h fluctuation grows like D^δ at every point: it is the
  α·√D/√(LM) term of the error bound, set by LM, not by the parameterization).

Each exponent gets a sign from its confidence interval [lo, hi] and a tolerance τ
(default 1/8, half the 1/4 spacing of the grid's offsets from the line):
``+`` if lo > τ, ``−`` if hi < −τ, ``0`` if −τ ≤ lo and hi ≤ τ, ``?`` otherwise.
Then, in this order: init ``+`` or output ``+`` → **unstable**; output ``−`` →
**trivial**; output ``0`` and unit ``−`` / ``0`` / ``+`` → **lazy ODE** /
**complete feature learning** / **over-active**; a ``?`` where the rule needs a
sign → **undetermined**. The same rule applied to the scaling argument's
exponents gives each point's ``theory_regime``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from deepres.study.phase.family import AXES
from deepres.study.shared.fit import fit_kept
from deepres.study.shared.sweep import derived_seed

__all__ = [
    "FIRST_STEP",
    "K_STEP",
    "REGIMES",
    "RULE",
    "RULE_TEXT",
    "analyze_phase",
    "classify",
    "exponent_sign",
    "line_offset",
    "theory_exponent",
]

#: First-step quantities (per unit η), per replica.
FIRST_STEP: tuple[str, ...] = ("output_step", "weight_step", "weight_step_u", "weight_step_v", "preact_step",
                               "init_fluct_h", "init_fluct_f")
#: K-step quantities, per replica.
K_STEP: tuple[str, ...] = ("output_move", "weight_move", "loss_decrease", "nonlinearity")
#: Regimes :func:`classify` returns.
REGIMES: tuple[str, ...] = ("unstable", "trivial", "lazy ODE", "complete feature learning", "over-active",
                            "undetermined")
#: The quantities whose exponents the rule reads, per diagram.
RULE: dict[str, dict[str, str]] = {
    "depth": {"output": "output_step", "unit": "weight_step", "init": "init_fluct_h"},
    "dim": {"output": "output_step", "unit": "preact_step", "init": "init_fluct_f"},
}


#: The rule in words, recorded in every report.
RULE_TEXT = (
    "sign of an exponent with CI [lo, hi]: + if lo > tau, - if hi < -tau, 0 if -tau <= lo and hi <= tau, "
    "? otherwise. Regime, in order: init + or output + -> unstable; output - -> trivial; output 0 and "
    "unit - / 0 / + -> lazy ODE / complete feature learning / over-active; a ? where a sign is needed -> "
    "undetermined. init, output, unit: the first-step exponents named in 'quantities'."
)


def theory_exponent(diagram: str, quantity: str, point: tuple[float, float]) -> float | None:
    """The scaling argument's exponent of a first-step quantity (None for the K-step ones).

    Example:
        >>> theory_exponent("depth", "output_step", (1.0, 1.25))
        0.25
    """
    x, y = point
    if diagram == "depth":  # (β, γ)
        table = {"output_step": 1 + y - 2 * x, "init_fluct_h": 0.5 - x, "init_fluct_f": 0.5 - x}
        unit = y - x
        table |= dict.fromkeys(("weight_step", "weight_step_u", "weight_step_v", "preact_step"), unit)
    else:  # (δ, λ)
        table = {"output_step": y + 2 * x - 1, "preact_step": y + x - 0.5, "init_fluct_f": x - 0.5,
                 "init_fluct_h": x}
        table |= dict.fromkeys(("weight_step", "weight_step_u", "weight_step_v"), y + x - 1)
    value = table.get(quantity)
    return None if value is None else round(value, 12)


def line_offset(diagram: str, point: tuple[float, float]) -> float:
    """How far the point lies above the line of O(1) output movement: γ − (2β − 1), or λ − (1 − 2δ)."""
    x, y = point
    return round(y - (2 * x - 1) if diagram == "depth" else y - (1 - 2 * x), 12)


def exponent_sign(ci_low: float | None, ci_high: float | None, tolerance: float) -> str:
    """``+``, ``−``, ``0`` or ``?`` for an exponent with CI [ci_low, ci_high] (see the module docstring).

    Example:
        >>> exponent_sign(0.2, 0.3, 0.125), exponent_sign(-0.05, 0.04, 0.125), exponent_sign(0.1, 0.2, 0.125)
        ('+', '0', '?')
    """
    if ci_low is None or ci_high is None:
        return "?"
    if ci_low > tolerance:
        return "+"
    if ci_high < -tolerance:
        return "−"
    if -tolerance <= ci_low and ci_high <= tolerance:
        return "0"
    return "?"


def classify(signs: dict[str, str]) -> tuple[str, str]:
    """The regime of a point from the signs of its ``init``, ``output`` and ``unit`` exponents.

    Returns:
        (regime, reason).

    Example:
        >>> classify({"init": "−", "output": "0", "unit": "0"})
        ('complete feature learning', 'output 0, unit 0')
    """
    if signs["init"] == "+":
        return "unstable", "the fluctuation at initialization grows"
    if signs["output"] == "+":
        return "unstable", "the output step grows"
    if signs["init"] == "?":
        return "undetermined", "sign of the initial fluctuation's exponent"
    if signs["output"] == "−":
        return "trivial", "the output step vanishes"
    if signs["output"] == "?":
        return "undetermined", "sign of the output exponent"
    regime = {"−": "lazy ODE", "0": "complete feature learning", "+": "over-active"}.get(signs["unit"])
    if regime is None:
        return "undetermined", "sign of the unit exponent"
    return regime, f"output 0, unit {signs['unit']}"


def _valid(quantity: str, result: dict[str, Any]) -> torch.Tensor:
    values = result[quantity]
    ok = torch.isfinite(values)
    if quantity in K_STEP:
        ok &= ~result["nonfinite"]
        if quantity == "nonlinearity":
            # The distance between two trained models: only where both trained (a model whose
            # loss went up is as far from the network as its divergence takes it).
            ok &= ~result["diverged"] & ~result["diverged_lin"]
    return ok


def _fit(xs: list[int], series: list[np.ndarray], *, draws: int, level: float, seed: int,
         ) -> dict[str, Any]:
    """Log-log fit of the replica means against x, with a bootstrap over replicas at each x."""
    rng = np.random.default_rng(seed)
    keep_x, means, boot, excluded = [], [], [], []
    for x, values in zip(xs, series, strict=True):
        if values.size == 0:
            excluded.append({"x": x, "value": None, "reason": "no valid replica"})
            continue
        mean = float(values.mean())
        if not (math.isfinite(mean) and mean > 0):
            excluded.append({"x": x, "value": mean, "reason": "mean not positive"})
            continue
        keep_x.append(x)
        means.append(mean)
        boot.append(values[rng.integers(values.size, size=(draws, values.size))].mean(1))
    return fit_kept(keep_x, means, boot, excluded=excluded, level=level).as_dict()


def _coordinates(diagram: str, point: tuple[float, float]) -> dict[str, float]:
    return dict(zip(AXES[diagram], point, strict=True))


def _measurement_row(unit: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"diagram": unit["diagram"], **_coordinates(unit["diagram"], tuple(unit["point"])),
                           "depth": unit["depth"], "hidden": unit["hidden"], "dim": unit["dim"],
                           "replicas": unit["replicas"], "first_eta": result["eta"],
                           "linearity_ratio": result["linearity_ratio"], "jvp_gap": result["jvp_gap"],
                           "halvings": result["halvings"],
                           "eta": unit["eta"], "steps": unit["steps"]}
    for quantity in FIRST_STEP + K_STEP:
        if quantity in result:
            ok = _valid(quantity, result)
            row[quantity] = float(result[quantity][ok].mean()) if bool(ok.any()) else None
    if "nonfinite" in result:
        row["nonfinite"] = int(result["nonfinite"].sum())
        row["diverged"] = int(result["diverged"].sum())
        row["diverged_lin"] = int(result["diverged_lin"].sum())
        row["loss_curve"] = result["losses"][:, ~result["nonfinite"]].mean(1).tolist()
    row["seconds"] = result["seconds"]
    return row


def analyze_phase(pairs: Iterable[tuple[dict[str, Any], dict[str, Any]]], *, tolerance: float = 0.125,
                  bootstrap: int = 400, level: float = 0.95, linearity_tolerance: float = 0.05,
                  ) -> dict[str, Any]:
    """Fit, classify and check every point of the phase study.

    Args:
        pairs: (unit, result) for every unit (see :func:`deepres.study.phase.measure.run_phase_unit`).
        tolerance: τ of the sign rule. Default 0.125. bootstrap: draws per fit. Default 400.
        level: CI coverage. Default 0.95. linearity_tolerance: the first step's check. Default 0.05.

    Returns:
        ``{"rule": ..., "depth": {"points", "measurements"}, "dim": {...}, "checks": [...]}``
        (a diagram without units is left out).
    """
    by_point: dict[tuple[str, tuple[float, float]], list[tuple[dict, dict]]] = {}
    for unit, result in pairs:
        by_point.setdefault((unit["diagram"], tuple(unit["point"])), []).append((unit, result))
    report: dict[str, Any] = {"rule": {"tolerance": tolerance, "quantities": RULE, "text": RULE_TEXT}}
    for (diagram, point), members in by_point.items():
        axis = "depth" if diagram == "depth" else "dim"
        members.sort(key=lambda pair: pair[0][axis])
        xs = [unit[axis] for unit, _ in members]
        exponents = {}
        for quantity in FIRST_STEP + K_STEP:
            if quantity not in members[0][1]:
                continue
            series = [result[quantity][_valid(quantity, result)].double().numpy() for _, result in members]
            fit = _fit(xs, series, draws=bootstrap, level=level,
                       seed=derived_seed("phase-bootstrap", diagram, point, quantity))
            exponents[quantity] = fit | {"theory": theory_exponent(diagram, quantity, point)}
        signs = {role: exponent_sign(exponents[q]["ci_low"], exponents[q]["ci_high"], tolerance)
                 for role, q in RULE[diagram].items()}
        regime, reason = classify(signs)
        theory_signs = {role: exponent_sign(exponents[q]["theory"], exponents[q]["theory"], 0.0)
                        for role, q in RULE[diagram].items()}
        ratios = [result["linearity_ratio"] for _, result in members]
        gaps = [result["jvp_gap"] for _, result in members]
        entry = {
            "diagram": diagram, **_coordinates(diagram, point), "x": axis, "xs": xs,
            "line_offset": line_offset(diagram, point),
            "regime": regime, "reason": reason, "signs": signs,
            "theory_regime": classify(theory_signs)[0],
            "first_eta": [result["eta"] for _, result in members], "linearity_ratio": ratios,
            "jvp_gap": gaps,
            "linear": all(abs(r / 2 - 1) <= linearity_tolerance for r in ratios)
            and all(g <= linearity_tolerance for g in gaps),
            "exponents": exponents,
        }
        if "diverged" in members[0][1]:
            entry["diverged"] = [int(result["diverged"].sum()) for _, result in members]
            entry["diverged_lin"] = [int(result["diverged_lin"].sum()) for _, result in members]
            entry["nonfinite"] = [int(result["nonfinite"].sum()) for _, result in members]
        section = report.setdefault(diagram, {"points": [], "measurements": []})
        section["points"].append(entry)
        section["measurements"].extend(_measurement_row(unit, result) for unit, result in members)
    report["checks"] = _checks(report, linearity_tolerance)
    return report


def _checks(report: dict[str, Any], linearity_tolerance: float) -> list[dict[str, Any]]:
    checks: list[dict[str, Any]] = []
    depth = report.get("depth", {}).get("points", [])
    mlu = next((p for p in depth if (p["beta"], p["gamma"]) == (1.0, 1.0)), None)
    if mlu is not None:
        checks.append({"check": "mlu (β, γ) = (1, 1) is classified complete feature learning",
                       "value": mlu["regime"], "holds": mlu["regime"] == "complete feature learning"})
        names = ("output_step", "weight_step", "weight_step_u", "weight_step_v")
        worst = max(abs(mlu["exponents"][q]["slope"]) for q in names)
        checks.append({"check": "mlu: output and unit movement exponents within ±0.15 of 0",
                       "value": worst, "holds": worst <= 0.15})
    for diagram in ("depth", "dim"):
        points = report.get(diagram, {}).get("points", [])
        above = [p for p in points if p["line_offset"] > 1e-9]
        # Below the line the output step vanishes; a point is trivial there unless its fluctuation
        # at initialization grows (β < 1/2, δ > 1/2), which makes it unstable whatever its step.
        sign = 1 if diagram == "depth" else -1
        below = [p for p in points
                 if p["line_offset"] < -1e-9 and sign * (p[AXES[diagram][0]] - 0.5) >= 0]
        if above:
            wrong = [_name(p) for p in above if p["regime"] != "unstable"]
            checks.append({"check": f"{diagram}: every point strictly above the line is unstable",
                           "value": wrong, "holds": not wrong})
        if below:
            wrong = [_name(p) for p in below if p["regime"] != "trivial"]
            where = "β ≥ 1/2" if diagram == "depth" else "δ ≤ 1/2"
            checks.append({"check": f"{diagram}: every point strictly below the line ({where}: the "
                                    f"fluctuation at initialization does not grow) is trivial",
                           "value": wrong, "holds": not wrong})
        if points:
            wrong = [_name(p) for p in points if not p["linear"]]
            checks.append({"check": f"{diagram}: the first step is linear in η at every point and x (two "
                                    f"halvings halve it, it matches J·Δθ, within {linearity_tolerance:g})",
                           "value": wrong, "holds": not wrong})
            wrong = [_name(p) for p in points if p["regime"] != p["theory_regime"]]
            checks.append({"check": f"{diagram}: measured regime = the scaling argument's, every point",
                           "value": wrong, "holds": not wrong})
    dim = report.get("dim", {}).get("points", [])
    if dim:
        complete = [_name(p) for p in dim if p["regime"] == "complete feature learning"]
        checks.append({"check": "dim: (δ, λ) = (1/2, 0), residual scale √D/(LM), is the only point of "
                                "complete feature learning", "value": complete,
                       "holds": complete == ["(0.5, 0)"]})
    return checks


def _name(point: dict[str, Any]) -> str:
    first, second = AXES[point["diagram"]]
    return f"({point[first]:g}, {point[second]:g})"
