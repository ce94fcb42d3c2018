"""Sweeps: units of work, a results store that survives interruption, executors.

A study is cut into independent *units*, each a plain JSON-able dict:

* ``{"kind": "resnet", ...}``: R coupled ResNet replicas of one (L, M, D, α, η, steps, seed);
* ``{"kind": "limit", ...}``: the limit for one (D, α, η, steps, seed), with ``sets``
  independent particle draws of K particles on an N-step grid (the grid check is
  another limit unit with N/2 steps);
* ``{"kind": "lazy", ...}``: the α-sweep measurements of one (L, M, D, α, η, steps, seed);
* ``{"kind": "lazy_limit", ...}``: the α → ∞ limit of that sweep (d_∞), α-free.

A unit's result depends only on the unit (its seeds are derived from its content),
so units can run in any order, on any worker. :class:`~deepres.study.store.ResultStore`
keeps one file per finished unit, written atomically (a temporary file then
``os.replace``): a rerun reads back what is there and runs only what is missing, and
a run killed midway loses only the unit it was running. A file that cannot be read
back is renamed to ``*.corrupt``, reported, and its unit runs again. Results are
also keyed by the stack backend and the device type
(:func:`~deepres.study.store.unit_identity`): a rerun with another ``backend`` or
``device`` computes its own results instead of resuming from those of the first.

Executors run units: :class:`LocalExecutor` runs them one after the other in this
process; :class:`deepres.study.ray_executor.RayExecutor` runs each as a Ray task, on a
laptop or a cluster. An executor only has to implement :meth:`Executor.run`: call
``work(unit)`` somewhere, and ``on_done(unit, result)`` in this process for each
result, as they finish, so that the store is written by one process; a unit it gives
up on (its worker died more often than the retries allow) goes to
``on_failed(unit, message)``, which records the failure next to the results without
touching them. A rerun retries failed units.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

from deepres.study.compare import build_limit_sets, build_resnet, coupling_weights
from deepres.study.data import make_task
from deepres.study.estimate import format_seconds, model_seconds
from deepres.study.lazy import lazy_limit, lazy_measurements
from deepres.study.store import (
    CorruptResultError,
    CorruptResultWarning,
    ResultStore,
    unit_identity,
    unit_key,
)
from deepres.training import train

__all__ = [
    "CorruptResultError",
    "CorruptResultWarning",
    "Executor",
    "LocalExecutor",
    "ResultStore",
    "derived_seed",
    "lazy_weight_seed",
    "run_unit",
    "run_units",
    "unit_cost",
    "unit_identity",
    "unit_key",
]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def derived_seed(*parts: object) -> int:
    """A 62-bit seed derived from ``parts`` (stable across runs and machines)."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return int(hashlib.sha256(text.encode()).hexdigest()[:15], 16)


def lazy_weight_seed(unit: dict[str, Any]) -> int:
    """Seed of the initial weights of a ``lazy`` or ``lazy_limit`` unit: the same for every α.

    Derived from the unit without its α and kind, so that every α of a sweep, and its
    α → ∞ limit, start from the same draw (common random numbers).
    """
    return derived_seed("lazy", {k: v for k, v in unit.items() if k not in ("alpha", "kind")})


def unit_cost(unit: dict[str, Any]) -> float:
    """Predicted wall time of a unit on the reference CPU, in seconds, for ordering and the
    progress bar (:func:`deepres.study.estimate.model_seconds`)."""
    return model_seconds(unit)


def _task_and_coupling(unit: dict[str, Any], device: torch.device | str | None,
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    dtype = _DTYPES[unit["dtype"]]
    task = make_task(unit["task"], unit["seed"], samples=unit["samples"], dtype=dtype, device=device)
    embed, readout = coupling_weights(task.in_features, task.out_features, unit["dim"],
                                      derived_seed("coupling", unit["seed"], unit["dim"]),
                                      dtype=dtype, device=device)
    return task.x, task.y, embed, readout


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
        For ``lazy``: see :func:`deepres.study.lazy.lazy_measurements`; for ``lazy_limit``:
        :func:`deepres.study.lazy.lazy_limit`. Always
        ``seconds`` (wall time).
    """
    start = time.perf_counter()
    x, y, embed, readout = _task_and_coupling(unit, device)
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


Work = Callable[[dict[str, Any]], dict[str, Any]]
OnDone = Callable[[dict[str, Any], dict[str, Any]], None]
OnFailed = Callable[[dict[str, Any], str], None]


class Executor(Protocol):
    """Runs units of work; see the module docstring for the contract."""

    def run(self, work: Work, units: Sequence[dict[str, Any]], on_done: OnDone,
            on_failed: OnFailed | None = None) -> None:
        """Call ``work(unit)`` for every unit, and ``on_done(unit, result)`` here as each
        finishes (``on_failed(unit, message)`` for a unit given up on)."""
        ...


class LocalExecutor:
    """Runs the units one after the other in this process (the default executor).

    An exception in a unit stops the sweep (what is stored stays stored).
    """

    def run(self, work: Work, units: Sequence[dict[str, Any]], on_done: OnDone,
            on_failed: OnFailed | None = None) -> None:
        for unit in units:
            on_done(unit, work(unit))


def run_units(units: Sequence[dict[str, Any]], store: ResultStore, *, executor: Executor | None = None,
              device: torch.device | str | None = None, backend: str | None = None, progress: bool = True,
              cost: Callable[[dict[str, Any]], float] | None = None) -> dict[str, int]:
    """Run the units that the store does not hold yet; store each as it finishes.

    Args:
        units: the study's units. store: where results go.
        executor: Default :class:`LocalExecutor`.
        device, backend: where and with which stack backend the units run. Default None:
            the store's (see :class:`ResultStore`); when given they must agree with it.
        progress: show a tqdm bar weighted by ``cost`` (its ETA). Default True.
        cost: a unit's predicted seconds, for the order (cheapest first) and the bar; e.g.
            the model scaled to this machine by :func:`deepres.study.estimate.calibrate`.
            Default :func:`unit_cost` (the reference CPU's).

    Returns:
        ``{"total": ..., "resumed": ..., "ran": ..., "failed": ...}`` counts of units
        (failed: given up on by the executor, recorded with
        :meth:`ResultStore.save_failure`).
    """
    device = store.device if device is None else device
    backend = store.backend if backend is None else backend
    if unit_identity(device, backend) != store.identity:
        raise ValueError(f"device {device!r} and backend {backend!r} must match the store's "
                         f"{store.identity}: its results are keyed by them")
    executor = executor or LocalExecutor()
    todo = [u for u in units if not store.has(u)]
    counts = {"total": len(units), "resumed": len(units) - len(todo), "ran": 0, "failed": 0}
    # Cheapest first: the bar's rate settles early and an interruption keeps the most units.
    cost = cost or unit_cost
    todo.sort(key=cost)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        # The bar counts predicted seconds, not units, so that its ETA weighs big units right;
        # until the first unit ends, the postfix shows the prediction itself.
        total = sum(cost(u) for u in todo)
        bar = tqdm(total=total, desc="study", bar_format="{l_bar}{bar}| {percentage:3.0f}% "
                   "[{elapsed}<{remaining}] {postfix}")
        bar.set_postfix_str(f"{counts['resumed']} units resumed, {len(todo)} to run, "
                            f"about {format_seconds(total)}")

    def done(unit: dict[str, Any], result: dict[str, Any]) -> None:
        store.save(unit, result)
        counts["ran"] += 1
        if bar is not None:
            bar.update(cost(unit))
            bar.set_postfix_str(f"{unit_key(unit)[:14]} {result['seconds']:.1f}s")

    def failed(unit: dict[str, Any], message: str) -> None:
        store.save_failure(unit, message)
        counts["failed"] += 1
        if bar is not None:
            bar.update(cost(unit))
            bar.set_postfix_str(f"{unit_key(unit)[:14]} FAILED")

    def work(unit: dict[str, Any]) -> dict[str, Any]:
        return run_unit(unit, device=device, backend=backend)

    try:
        executor.run(work, todo, done, failed)
    finally:
        if bar is not None:
            bar.close()
    return counts
