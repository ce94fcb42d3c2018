"""The loop of every study: run the units a results store does not hold yet, store each as it ends.

A study is cut into independent *units*, each a plain JSON-able dict whose result
depends only on the unit (its seeds are derived from its content by
:func:`derived_seed`), so units can run in any order, on any worker.
:class:`~deepres.study.shared.store.ResultStore` keeps one file per finished unit:
a rerun reads back what is there and runs only what is missing, and a run killed
midway loses only the unit it was running.

Executors run units: :class:`LocalExecutor` runs them one after the other in this
process; :class:`deepres.study.shared.ray_executor.RayExecutor` runs each as a Ray
task, on a laptop or a cluster. An executor only has to implement
:meth:`Executor.run`: call ``work(unit)`` somewhere, and ``on_done(unit, result)``
in this process for each result, as they finish, so that the store is written by
one process; a unit it gives up on (its worker died more often than the retries
allow) goes to ``on_failed(unit, message)``, which records the failure next to the
results without touching them. A rerun retries failed units.

What one unit computes is the study's own: the convergence study's is
:func:`deepres.study.convergence.units.run_unit`, the phase study's
:func:`deepres.study.phase.measure.run_phase_unit`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from deepres.study.shared.store import ResultStore, unit_key

__all__ = ["Executor", "LocalExecutor", "OnDone", "OnFailed", "Work", "derived_seed", "run_units"]

Work = Callable[[dict[str, Any]], dict[str, Any]]
OnDone = Callable[[dict[str, Any], dict[str, Any]], None]
OnFailed = Callable[[dict[str, Any], str], None]


def derived_seed(*parts: object) -> int:
    """A 62-bit seed derived from ``parts`` (stable across runs and machines).

    Args:
        parts: any JSON-able values (others are written with ``str``).

    Returns:
        An int in [0, 2⁶⁰).

    Example:
        >>> derived_seed("resnet", {"depth": 4}) == derived_seed("resnet", {"depth": 4})
        True
    """
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return int(hashlib.sha256(text.encode()).hexdigest()[:15], 16)


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


def run_units(units: Sequence[dict[str, Any]], store: ResultStore, work: Work, *,
              cost: Callable[[dict[str, Any]], float], executor: Executor | None = None,
              progress: bool = True, desc: str = "study",
              total_text: Callable[[float], str] | None = None) -> dict[str, int]:
    """Run ``work`` on the units that the store does not hold yet; store each as it finishes.

    Args:
        units: the study's units. store: where results go. work: a unit's computation,
            ``work(unit)`` → its result (with ``seconds``, its wall time).
        cost: a unit's predicted cost, for the order (cheapest first: the bar's rate
            settles early and an interruption keeps the most units) and the bar.
        executor: Default :class:`LocalExecutor`.
        progress: show a tqdm bar weighted by ``cost`` (its ETA). Default True.
        desc: the bar's label. Default ``"study"``.
        total_text: the bar's first postfix says ``about total_text(total cost)``.
            Default None: no such words.

    Returns:
        ``{"total": ..., "resumed": ..., "ran": ..., "failed": ...}`` counts of units
        (failed: given up on by the executor, recorded with
        :meth:`ResultStore.save_failure`).

    Example:
        >>> import tempfile
        >>> store = ResultStore(tempfile.mkdtemp())
        >>> units = [{"kind": "demo", "n": n} for n in (2, 1)]
        >>> run_units(units, store, lambda u: {"seconds": 0.0, "n": u["n"]}, cost=lambda u: u["n"],
        ...           progress=False)
        {'total': 2, 'resumed': 0, 'ran': 2, 'failed': 0}
    """
    executor = executor or LocalExecutor()
    todo = sorted((u for u in units if not store.has(u)), key=cost)
    counts = {"total": len(units), "resumed": len(units) - len(todo), "ran": 0, "failed": 0}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        # The bar counts predicted cost, not units, so that its ETA weighs big units right;
        # until the first unit ends, the postfix shows the prediction itself.
        total = sum(cost(u) for u in todo)
        bar = tqdm(total=total, desc=desc, bar_format="{l_bar}{bar}| {percentage:3.0f}% "
                   "[{elapsed}<{remaining}] {postfix}")
        about = "" if total_text is None else f", about {total_text(total)}"
        bar.set_postfix_str(f"{counts['resumed']} units resumed, {len(todo)} to run{about}")

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

    try:
        executor.run(work, todo, done, failed)
    finally:
        if bar is not None:
            bar.close()
    return counts
