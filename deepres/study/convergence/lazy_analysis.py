"""The lazy sweep's report: per-α means, fits with a paired bootstrap, d_∞, linearization gaps.

Every α of a sweep starts from the same initial weights (common random numbers,
:func:`deepres.study.convergence.units.lazy_weight_seed`), so the per-α values are paired: one
replica is the same network draw at every α. The bootstrap therefore resamples the
replicas once per draw, the same replicas for every α, and refits: a CI of a slope
in α covers the replica sampling of the whole curve, not of independent points.

Reported per sweep (seed, D, η, steps):

* ``points``: per α, the means over replicas of the weight movement, the distance to
  the lazy ODE, the distance to the network's linearization and its gap to d_∞, the
  output movement and the final loss; ``local_slope``: the lazy-ODE distance's slope
  from the previous α (where the 1/α² range starts);
* ``fits``: ``weight_movement_vs_alpha`` over every α (theory −1) and
  ``lazy_ode_distance_vs_alpha`` over α ≥ ``lazy_fit_min`` (theory −2, its asymptotic
  range; the points below are listed as excluded);
* ``d_inf``: d_∞ (mean over replicas, its standard error), see :mod:`deepres.study.convergence.lazy`;
* ``linearization``: max − min of the linearization distance over α ≥
  :data:`LINEARIZATION_FROM_ALPHA`, and the largest |distance − d_∞| there.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from deepres.study.convergence.presets import StudyConfig
from deepres.study.shared.fit import fit_points
from deepres.study.shared.store import ResultStore
from deepres.study.shared.sweep import derived_seed

__all__ = ["LINEARIZATION_FROM_ALPHA", "analyze_lazy"]

#: The linearization distances are compared with each other and with d_∞ from this α on
#: (measured with the quick sweep: the lazy-ODE distance is 4·10⁻³ at α = 8, 10⁻³ at 16).
LINEARIZATION_FROM_ALPHA = 8.0

_KEYS = ("seed", "dim", "eta", "steps")
_QUANTITIES = ("weight_movement", "lazy_ode_distance", "linearization_distance", "output_movement",
               "final_loss")
_THEORY = {"weight_movement": -1.0, "lazy_ode_distance": -2.0}


def analyze_lazy(config: StudyConfig, store: ResultStore) -> dict[str, Any]:
    """The lazy sweep's report (see the module docstring); empty lists without a sweep."""
    out: dict[str, Any] = {"points": [], "fits": [], "d_inf": [], "linearization": []}
    units = config.lazy_units()
    limits = {tuple(u[k] for k in _KEYS): u for u in config.lazy_limit_units()}
    sweeps: dict[tuple, list[dict[str, Any]]] = {}
    for unit in units:
        sweeps.setdefault(tuple(unit[k] for k in _KEYS), []).append(unit)
    for key, members in sweeps.items():
        members = sorted(members, key=lambda u: u["alpha"])
        results = [store.load(u) for u in members]
        limit = store.load(limits[key])
        # Paired replicas: keep those finite at every α and in the limit.
        valid = ~limit["nonfinite"].bool()
        for result in results:
            valid &= ~result["nonfinite"].bool()
        fixed = dict(zip(_KEYS, key, strict=True)) | {"depth": config.lazy_depth,
                                                     "hidden": config.lazy_hidden}
        used = int(valid.sum())
        d_inf_values = limit["d_inf"][valid].double()
        d_inf = float(d_inf_values.mean()) if used else math.nan
        d_inf_se = float(d_inf_values.std() / math.sqrt(used)) if used > 1 else math.nan
        out["d_inf"].append(fixed | {"d_inf": d_inf, "d_inf_se": d_inf_se, "replicas": used})
        gen = torch.Generator().manual_seed(derived_seed("lazy-bootstrap", fixed))
        idx = torch.randint(max(used, 1), (config.bootstrap, max(used, 1)), generator=gen)
        points: dict[str, list[dict[str, Any]]] = {name: [] for name in _THEORY}
        previous = None
        for unit, result in zip(members, results, strict=True):
            row = fixed | {"alpha": unit["alpha"], "replicas": config.lazy_replicas, "used": used,
                           "nonfinite": int(result["nonfinite"].bool().sum())}
            for name in _QUANTITIES:
                row[name] = float(result[name][valid].double().mean()) if used else math.nan
            row["linearization_gap"] = row["linearization_distance"] - d_inf
            distance = row["lazy_ode_distance"]
            row["local_slope"] = (math.log(distance / previous[1]) / math.log(unit["alpha"] / previous[0])
                                  if previous and previous[1] > 0 and distance > 0 else None)
            previous = (unit["alpha"], distance)
            out["points"].append(row)
            for name in _THEORY:
                values = result[name][valid].double()
                draws = values[idx].mean(1).numpy() if used else values.new_zeros(0).numpy()
                points[name].append({"value": row[name], "reference_error": 0.0, "bias_se": 0.0,
                                     "draws": draws})
        alphas = [float(u["alpha"]) for u in members]
        for name, theory in _THEORY.items():
            span = (float(config.lazy_fit_min), math.inf) if name == "lazy_ode_distance" else None
            fit = fit_points(alphas, points[name], name, ref_ratio=1.0, noise_ratio=0.0, level=config.level,
                             x_range=span)
            covered = None if fit.slope is None else fit.covers(theory)
            out["fits"].append({"name": f"{name}_vs_alpha", "statistic": name, "space": "output",
                                "fixed": fixed, "step": fixed["steps"], "theory": theory,
                                "range": None if span is None else [span[0], None], **fit.as_dict(),
                                "theory_in_ci": covered})
        late = [r for r in out["points"][-len(members):] if r["alpha"] >= LINEARIZATION_FROM_ALPHA]
        distances = [r["linearization_distance"] for r in late]
        out["linearization"].append(fixed | {
            "from_alpha": LINEARIZATION_FROM_ALPHA, "alphas": [r["alpha"] for r in late],
            "spread": max(distances) - min(distances) if len(distances) >= 2 else None,
            "max_gap_to_d_inf": max((abs(r["linearization_gap"]) for r in late), default=None)})
    return out
