"""Run a study's units as Ray tasks: on a laptop, or on a cluster started with ``ray start``.

Each unit (one shape's replicas, one limit) is one Ray task. The driver — the
``deepres study`` process — keeps writing the results store itself, one file per
finished unit, atomically, so a sweep can be resumed with either executor, and
the limit of a configuration, being a unit of its own, is computed once and read
by every comparison that needs it.

Faults: a task whose worker process dies (killed, out of memory, node lost) is
retried by Ray up to ``max_retries`` times; after that the unit is reported
failed (``on_failed``) and the sweep goes on. Ctrl-C returns at once; the tasks
still running end with the driver's Ray job, what had finished is stored, and a
rerun resumes.

Ray is an optional dependency: ``pip install 'deepres[ray]'``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from deepres.study.shared.sweep import OnDone, OnFailed, Work

__all__ = ["RayExecutor", "require_ray"]


def require_ray() -> Any:
    """Import and return the ``ray`` module, or raise an ImportError naming the extra to install."""
    try:
        import ray
    except ImportError as error:
        raise ImportError(
            "--executor ray needs Ray, an optional dependency of deepres: pip install 'deepres[ray]'"
        ) from error
    return ray


class RayExecutor:
    """Runs each unit of a sweep as a Ray task.

    Args:
        address: the address of a running Ray cluster (as printed by ``ray start
            --head``, or ``"auto"``). Default None: start a local Ray instance
            for the sweep and stop it afterwards.
        max_retries: how many times a task whose worker died is run again before
            the unit is reported failed. Default 2.
        gpus_per_task: GPUs each task asks for. Default None: 1 when the cluster
            has GPUs, else 0.
        num_cpus: CPUs of a local instance (ignored with ``address``). Default
            None: all of this machine's.

    Use it as a context manager (or call :meth:`close`) so that a local
    instance is stopped.

    Example (not run as a doctest: it starts a local Ray instance):
        >>> from deepres.study.convergence.presets import preset
        >>> from deepres.study.convergence.sweep import run_units
        >>> from deepres.study.shared.store import ResultStore
        >>> with RayExecutor(max_retries=1) as executor:                      # doctest: +SKIP
        ...     run_units(preset("quick").units(), ResultStore("study-out"), executor=executor)
    """

    def __init__(self, address: str | None = None, *, max_retries: int = 2,
                 gpus_per_task: float | None = None, num_cpus: int | None = None) -> None:
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an int ≥ 0; got {max_retries!r}")
        self._ray = require_ray()
        self.address = address
        self.max_retries = max_retries
        self._started = False
        if not self._ray.is_initialized():
            if address is None:
                # A private instance on loopback, without the dashboard (nothing to serve here).
                self._ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                               _node_ip_address="127.0.0.1")
            else:
                self._ray.init(address=address, log_to_driver=False)
            self._started = True
        if gpus_per_task is None:
            gpus_per_task = 1.0 if self._ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        self.gpus_per_task = float(gpus_per_task)

    @property
    def has_gpus(self) -> bool:
        """True when each task gets a GPU."""
        return self.gpus_per_task > 0

    def close(self) -> None:
        """Stop the Ray instance if this executor started it."""
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
        self._started = False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def run(self, work: Work, units: Sequence[dict[str, Any]], on_done: OnDone,
            on_failed: OnFailed | None = None) -> None:
        """Submit every unit, then hand each result to ``on_done`` as it arrives.

        Raises:
            Exception: a unit that raised an exception in its own code (not a
                worker death) stops the sweep with that exception, as the local
                executor would; results already handed over stay stored.
        """
        ray = self._ray
        task = ray.remote(num_cpus=1, num_gpus=self.gpus_per_task, max_retries=self.max_retries,
                          retry_exceptions=False)(work)
        # On Ctrl-C or an error the loop is left with tasks still queued or running: they
        # belong to this driver's Ray job, which Ray ends when the driver disconnects
        # (close()). NOTE: no ray.cancel here: force-cancelling them in Ray 2.60 trips an
        # internal check ("Tried to complete task that was not pending") that aborts the
        # driver, seen in 2 of 3 interrupted runs.
        pending = {task.remote(unit): unit for unit in units}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            ref = ready[0]
            unit = pending.pop(ref)
            try:
                result = ray.get(ref)
            except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                    ray.exceptions.OutOfMemoryError) as error:
                if on_failed is None:
                    raise
                on_failed(unit, f"gave up after {self.max_retries} retries: "
                                f"{type(error).__name__}: {error}")
                continue
            except ray.exceptions.RayTaskError as error:
                raise error.as_instanceof_cause() from None
            on_done(unit, result)
