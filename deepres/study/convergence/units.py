"""What one unit of the convergence study computes.

The convergence study's units, each a plain JSON-able dict:

* ``{"kind": "resnet", ...}``: R coupled ResNet replicas of one (L, M, D, α, η, steps, seed);
* ``{"kind": "limit", ...}``: the limit for one (D, α, η, steps, seed), with ``sets``
  independent particle draws of K particles on an N-step grid (the grid check is
  another limit unit with N/2 steps);
* ``{"kind": "lazy", ...}``: the α-sweep measurements of one (L, M, D, α, η, steps, seed);
* ``{"kind": "lazy_limit", ...}``: the α → ∞ limit of that sweep (d_∞), α-free.

A unit's result depends only on the unit (its seeds are derived from its content,
:func:`deepres.study.shared.sweep.derived_seed`). :mod:`deepres.study.convergence.sweep`
runs them through the loop every study shares.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from deepres.study.convergence.compare import build_limit_sets, build_resnet
from deepres.study.convergence.lazy import lazy_limit, lazy_measurements
from deepres.study.shared.data import unit_task
from deepres.study.shared.sweep import derived_seed
from deepres.training import train

__all__ = ["lazy_weight_seed", "result_schema", "run_unit"]

def lazy_weight_seed(unit: dict[str, Any]) -> int:
    """Seed of the initial weights of a ``lazy`` or ``lazy_limit`` unit: the same for every α.

    Derived from the unit without its α and kind, so that every α of a sweep, and its
    α → ∞ limit, start from the same draw (common random numbers).
    """
    return derived_seed("lazy", {k: v for k, v in unit.items() if k not in ("alpha", "kind")})


def _weights(net: torch.nn.Module) -> torch.Tensor:
    """u and v of a replicated stack, flattened per replica: (R, 2·L·M·D)."""
    stack = net.stack  # type: ignore[attr-defined]
    return torch.cat([stack.u.detach().flatten(1), stack.v.detach().flatten(1)], dim=1).clone()


def run_unit(unit: dict[str, Any], *, device: torch.device | str | None = None,
             backend: str = "auto") -> dict[str, Any]:
    """Run one unit of work and return its result (CPU tensors and floats).

    Args:
        unit: a unit dict (see the module docstring).
        device: where to run. Default: CPU. backend: stack backend. Default ``"auto"``.

    Returns:
        For ``resnet``: ``outputs`` (S, R, N, d_out) and ``features`` (S, R, N, D) at
        ``record_steps``, ``losses`` (steps+1, R), ``nonfinite`` (R,), ``nonfinite_step``
        (R,), ``weight_movement`` (R,) = ‖θ_K − θ_0‖/‖θ_0‖. For ``limit``: ``outputs``
        (S, sets, N, d_out), ``features`` (S, sets, N, D), ``losses``, ``nonfinite``.
        For ``lazy``: see :func:`deepres.study.convergence.lazy.lazy_measurements`; for ``lazy_limit``:
        :func:`deepres.study.convergence.lazy.lazy_limit`. Always
        ``seconds`` (wall time).
    """
    start = time.perf_counter()
    x, y, embed, readout = unit_task(unit, device)
    record = unit["record_steps"]
    kind = unit["kind"]
    if kind == "resnet":
        net = build_resnet(embed, readout, depth=unit["depth"], hidden=unit["hidden"],
                           replicas=unit["replicas"], alpha=unit["alpha"], activation=unit["activation"],
                           antithetic=unit["antithetic"], backend=backend,
                           seed=derived_seed("resnet", unit))
        initial = _weights(net)
        result = train(net, x, y, steps=unit["steps"], eta=unit["eta"], record_steps=record)
        moved = (_weights(net) - initial).double().norm(dim=1) / initial.double().norm(dim=1)
        out: dict[str, Any] = {
            "outputs": result.recorded_outputs.cpu(), "features": result.recorded_features.cpu(),
            "losses": result.losses.cpu(), "nonfinite": result.nonfinite.cpu(),
            "nonfinite_step": result.nonfinite_step.cpu(), "weight_movement": moved.cpu(),
        }
    elif kind == "limit":
        nets = build_limit_sets(embed, readout, particles=unit["particles"], grid_steps=unit["grid_steps"],
                                sets=unit["sets"], alpha=unit["alpha"], activation=unit["activation"],
                                solver=unit["solver"], particle_init=unit["particle_init"],
                                seed=derived_seed("limit", unit["seed"], unit["dim"], unit["particles"]))
        results = [train(net, x, y, steps=unit["steps"], eta=unit["eta"], record_steps=record)
                   for net in nets]

        def stacked(name: str) -> torch.Tensor:
            parts = [getattr(r, name) for r in results]
            # A MeanODENet has no replica axis: give each of its records one.
            parts = [p.unsqueeze(1) if p.dim() == 3 else p for p in parts]
            return torch.cat(parts, dim=1).cpu()

        losses = [r.losses if r.losses.dim() == 2 else r.losses.unsqueeze(1) for r in results]
        nonfinite = [r.nonfinite.reshape(-1) for r in results]
        out = {"outputs": stacked("recorded_outputs"), "features": stacked("recorded_features"),
               "losses": torch.cat(losses, dim=1).cpu(), "nonfinite": torch.cat(nonfinite).cpu()}
    elif kind == "lazy":
        out = lazy_measurements(x, y, embed, readout, depth=unit["depth"], hidden=unit["hidden"],
                                replicas=unit["replicas"], alpha=unit["alpha"], eta=unit["eta"],
                                steps=unit["steps"], activation=unit["activation"],
                                seed=lazy_weight_seed(unit))
    elif kind == "lazy_limit":
        out = lazy_limit(x, y, embed, readout, depth=unit["depth"], hidden=unit["hidden"],
                         replicas=unit["replicas"], eta=unit["eta"], steps=unit["steps"],
                         activation=unit["activation"], seed=lazy_weight_seed(unit))
    else:
        raise ValueError(f"unit kind must be 'resnet', 'limit', 'lazy' or 'lazy_limit'; got {kind!r}")
    out["seconds"] = time.perf_counter() - start
    return out


def result_schema(unit: dict[str, Any]) -> dict[str, Any]:
    """What :func:`run_unit` returns for ``unit``: each entry's shape (a
    :data:`deepres.study.shared.store.Schema`), checked when a stored result is read back.

    Example:
        >>> result_schema({"kind": "lazy_limit", "replicas": 4})["d_inf"]
        (4,)
    """
    kind = unit["kind"]
    schema: dict[str, Any] = {"seconds": "number"}
    if kind in ("resnet", "limit"):
        records, samples = len(unit["record_steps"]), unit["samples"]
        width = unit["replicas"] if kind == "resnet" else unit["sets"]
        schema |= {"outputs": (records, width, samples, None),
                   "features": (records, width, samples, unit["dim"]),
                   "losses": (unit["steps"] + 1, width), "nonfinite": (width,)}
        if kind == "resnet":
            schema |= {"nonfinite_step": (width,), "weight_movement": (width,)}
    elif kind == "lazy":
        schema |= {name: (unit["replicas"],) for name in ("weight_movement", "lazy_ode_distance",
                                                          "linearization_distance", "output_movement",
                                                          "final_loss", "nonfinite")}
    elif kind == "lazy_limit":
        schema |= {name: (unit["replicas"],) for name in ("d_inf", "ode_movement", "nonfinite")}
    return schema
