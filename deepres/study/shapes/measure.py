"""What one unit of the shapes study computes: a trained network's h_L and f at the recorded steps.

A unit (:mod:`deepres.study.shapes.config`) is one reference draw or the R replicas
of one (L, M, D), in one repetition. It builds the task (the same data in every
repetition), the repetition's coupled W_E, W_U (:func:`~deepres.study.shapes.network.coupled_embedding`,
D_max rows; the network takes the first D), draws u, v from a seed derived from
the unit, trains K steps and returns h_L and f at the recorded steps. Errors are
computed afterwards, against the repetition's reference
(:mod:`deepres.study.shapes.analysis`), so every unit is independent of the others.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from deepres.study.shapes.network import coupled_embedding, draw_weights, prefix, train_engine, train_inplace
from deepres.study.shared.data import make_task
from deepres.study.shared.sweep import derived_seed

__all__ = ["embedding_seed", "run_shapes_unit", "unit_embedding", "weight_seed"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def embedding_seed(seed: int, rep: int) -> int:
    """Seed of repetition ``rep``'s coupled W_E, W_U (the same for every network of the repetition).

    Example:
        >>> embedding_seed(0, 1) == embedding_seed(0, 1) != embedding_seed(0, 2)
        True
    """
    return derived_seed("shapes-embedding", seed, rep)


def weight_seed(unit: dict[str, Any]) -> int:
    """Seed of a unit's u, v: derived from the whole unit (kind, repetition, draw, shape, ...)."""
    return derived_seed("shapes-weights", unit)


def unit_embedding(unit: dict[str, Any], in_features: int, out_features: int, *,
                   dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The W_E (D, d_in), W_U (D, d_out) of a unit: the first D rows of its repetition's D_max-row pair.

    Example:
        >>> unit = {"seed": 0, "rep": 1, "dim": 4, "dim_max": 16}
        >>> small, _ = unit_embedding(unit, 5, 5)
        >>> large, _ = unit_embedding(unit | {"dim": 16}, 5, 5)
        >>> bool(torch.equal(small, large[:4]))
        True
    """
    embed, readout = coupled_embedding(in_features, out_features, unit["dim_max"],
                                       embedding_seed(unit["seed"], unit["rep"]), dtype=dtype, device=device)
    return prefix(embed, readout, unit["dim"])


def run_shapes_unit(unit: dict[str, Any], *, device: torch.device | str | None = None,
                    backend: str = "auto") -> dict[str, Any]:
    """Train the network(s) of one unit and return what the analysis needs.

    Args:
        unit: a ``shapes_ref`` or ``shapes_point`` unit (:meth:`ShapesConfig.units`).
        device: Default CPU. backend: the stack backend of ``step="engine"``. Default ``"auto"``.

    Returns:
        ``features`` (S, R, N, D) and ``outputs`` (S, R, N, d_out) at the unit's
        ``record_steps`` (S of them), ``losses`` (K+1, R), all float32 CPU tensors, and
        ``seconds``.

    Example:
        >>> from deepres.study.shapes.config import ShapesConfig
        >>> config = ShapesConfig(reference=[4, 8, 8], dims=[4], widths=[], scales=[], replicas=2,
        ...                       steps=2, record_steps=[2])
        >>> result = run_shapes_unit(config.point_unit(0, (4, 8, 4)))
        >>> result["features"].shape, result["outputs"].shape
        (torch.Size([1, 2, 10, 4]), torch.Size([1, 2, 10, 5]))
    """
    start = time.perf_counter()
    dtype = _DTYPES[unit["dtype"]]
    task = make_task(unit["task"], unit["seed"], samples=unit["samples"], dtype=dtype, device=device)
    embed, readout = unit_embedding(unit, task.in_features, task.out_features, dtype=dtype, device=device)
    u, v = draw_weights(unit["depth"], unit["hidden"], unit["dim"], unit["replicas"], weight_seed(unit),
                        dtype=dtype, device=device)
    options = {"eta": unit["eta"], "steps": unit["steps"], "record_steps": unit["record_steps"],
               "alpha": unit["alpha"], "activation": unit["activation"]}
    with torch.no_grad():
        if unit["step"] == "inplace":
            out = train_inplace(task.x, task.y, embed, readout, u, v, **options)
    if unit["step"] == "engine":
        out = train_engine(task.x, task.y, embed, readout, u, v, backend=backend, **options)
    del u, v
    result: dict[str, Any] = {k: t.detach().to("cpu", torch.float32) for k, t in out.items()}
    result["seconds"] = time.perf_counter() - start
    return result
