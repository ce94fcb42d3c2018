"""The convergence study's sweep: its units through the loop every study shares.

:func:`run_units` runs the units (:mod:`deepres.study.convergence.units`) that the
results store (:class:`~deepres.study.shared.store.ResultStore`) does not hold yet,
cheapest first by the cost model of :mod:`deepres.study.convergence.estimate`, with
the loop, executors and progress bar of :mod:`deepres.study.shared.sweep`. Results
are keyed by the stack backend and the device type
(:func:`~deepres.study.shared.store.unit_identity`): a rerun with another ``backend``
or ``device`` computes its own results instead of resuming from those of the first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from deepres.study.convergence.estimate import format_seconds, model_seconds
from deepres.study.convergence.units import run_unit
from deepres.study.shared import sweep
from deepres.study.shared.store import ResultStore, unit_identity
from deepres.study.shared.sweep import Executor

__all__ = ["run_units", "unit_cost"]


def unit_cost(unit: dict[str, Any]) -> float:
    """Predicted wall time of a unit on the reference CPU, in seconds, for ordering and the
    progress bar (:func:`deepres.study.convergence.estimate.model_seconds`)."""
    return model_seconds(unit)


def run_units(units: Sequence[dict[str, Any]], store: ResultStore, *, executor: Executor | None = None,
              device: torch.device | str | None = None, backend: str | None = None, progress: bool = True,
              cost: Callable[[dict[str, Any]], float] | None = None) -> dict[str, int]:
    """Run the units that the store does not hold yet; store each as it finishes.

    Args:
        units: the study's units. store: where results go.
        executor: Default :class:`~deepres.study.shared.sweep.LocalExecutor`.
        device, backend: where and with which stack backend the units run. Default None:
            the store's (see :class:`ResultStore`); when given they must agree with it.
        progress: show a tqdm bar weighted by ``cost`` (its ETA). Default True.
        cost: a unit's predicted seconds, for the order (cheapest first) and the bar; e.g.
            the model scaled to this machine by :func:`deepres.study.convergence.estimate.calibrate`.
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

    def work(unit: dict[str, Any]) -> dict[str, Any]:
        return run_unit(unit, device=device, backend=backend)

    return sweep.run_units(units, store, work, cost=cost or unit_cost, executor=executor, progress=progress,
                           desc="study", total_text=format_seconds)
