"""Wall-clock timing of one benchmark step: warm-up, repeats, median and quantiles.

On the CPU the clock is :func:`time.perf_counter` (monotonic, sub-microsecond
resolution) around each call; the step itself is synchronous there. On CUDA
each repeat is bracketed by a pair of CUDA events, so the time is the device
time of the work the step queued, not the host time of queuing it; each repeat
is synchronized before the next starts, so one step's tail never overlaps the
next one's timing (a training step frees and re-allocates its gradients).
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

__all__ = ["TimingOptions", "TimingResult", "quantile", "time_interleaved", "time_step", "wall_time"]


@dataclass(frozen=True)
class TimingOptions:
    """How many times to run a step.

    Attributes:
        warmup: untimed calls first (allocator, caches, compilation). Default 1.
        min_repeats: timed calls at least. Default 3.
        max_repeats: timed calls at most. Default 20.
        min_time: keep repeating (up to ``max_repeats``) until the timed calls
            add up to this many seconds. Default 1.0.
        max_time: stop repeating (after ``min_repeats``) once this many
            seconds were spent. Default 30.0.
    """

    warmup: int = 1
    min_repeats: int = 3
    max_repeats: int = 20
    min_time: float = 1.0
    max_time: float = 30.0

    def __post_init__(self) -> None:
        for name in ("warmup", "min_repeats", "max_repeats"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0; got {value!r}")
        if self.min_repeats < 1 or self.max_repeats < self.min_repeats:
            raise ValueError(
                f"need 1 <= min_repeats <= max_repeats; got min_repeats={self.min_repeats}, "
                f"max_repeats={self.max_repeats}"
            )
        if not (self.min_time >= 0 and self.max_time > 0):
            raise ValueError(f"min_time must be >= 0 and max_time > 0; got {self.min_time}, {self.max_time}")


@dataclass(frozen=True)
class TimingResult:
    """Seconds per step over the timed repeats.

    Attributes:
        median, p10, p90, min, mean: statistics of the repeat times (seconds).
        repeats: number of timed calls. clock: ``"perf_counter"`` or ``"cuda_event"``.
    """

    median: float
    p10: float
    p90: float
    min: float
    mean: float
    repeats: int
    clock: str

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def quantile(values: list[float], q: float) -> float:
    """The q-quantile of ``values`` with linear interpolation (numpy's default rule).

    Args:
        values: a non-empty list. q: in [0, 1].

    Example:
        >>> quantile([1.0, 2.0, 3.0, 4.0], 0.5)
        2.5
    """
    if not values:
        raise ValueError("values must be non-empty")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1]; got {q}")
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def time_step(step: Callable[[], object], device: torch.device, options: TimingOptions) -> TimingResult:
    """Time ``step()`` on ``device`` after ``options.warmup`` untimed calls.

    Args:
        step: the work to time; its return value is dropped before the next call.
        device: where the work runs (``cuda`` uses CUDA events).
        options: the repeat policy.

    Returns:
        The :class:`TimingResult` (seconds).

    Example:
        >>> r = time_step(lambda: sum(range(1000)), torch.device("cpu"), TimingOptions(min_time=0.0))
        >>> r.repeats >= 3
        True
    """
    for _ in range(options.warmup):
        step()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
    times: list[float] = []
    spent = 0.0
    while len(times) < options.max_repeats:
        elapsed = _time_once(step, cuda)
        times.append(elapsed)
        spent += elapsed
        if len(times) >= options.min_repeats and (spent >= options.min_time or spent >= options.max_time):
            break
    return _summary(times, cuda)


def time_interleaved(steps: dict[str, Callable[[], object]], device: torch.device, options: TimingOptions,
                     seed: int = 0) -> dict[str, TimingResult]:
    """Time several steps in rounds, one call of each per round, in a shuffled order.

    On a machine shared with other work the load changes from minute to
    minute; timing the providers one after the other would charge each with the
    load of its own minute. Interleaving them exposes all to the same load, so
    their ratios stay meaningful even when the absolute times move.

    Args:
        steps: name → the work to time. device: where it runs.
        options: ``warmup`` untimed calls of each first; then rounds until at
            least ``min_repeats`` rounds were run and ``min_time`` seconds per
            step were spent on average, or ``max_repeats`` rounds, or
            ``max_time`` seconds per step on average (after ``min_repeats``).
        seed: of the shuffles. Default 0.

    Returns:
        name → :class:`TimingResult`.

    Example:
        >>> r = time_interleaved({"a": lambda: None, "b": lambda: None}, torch.device("cpu"),
        ...                      TimingOptions(min_time=0.0))
        >>> sorted(r), r["a"].repeats
        (['a', 'b'], 3)
    """
    cuda = device.type == "cuda"
    for step in steps.values():
        for _ in range(options.warmup):
            step()
    if cuda:
        torch.cuda.synchronize(device)
    names = list(steps)
    times: dict[str, list[float]] = {name: [] for name in names}
    shuffler = random.Random(seed)
    spent = 0.0
    for done in range(1, options.max_repeats + 1):
        order = names[:]
        shuffler.shuffle(order)
        for name in order:
            elapsed = _time_once(steps[name], cuda)
            times[name].append(elapsed)
            spent += elapsed
        per_step = spent / len(names)
        if done >= options.min_repeats and (per_step >= options.min_time or per_step >= options.max_time):
            break
    return {name: _summary(values, cuda) for name, values in times.items()}


def wall_time(step: Callable[[], object], device: torch.device) -> float:
    """Seconds of wall-clock time of one call of ``step()``, host work included (on CUDA,
    synchronized before and after): the time a user waits, compilation included.

    Example:
        >>> wall_time(lambda: None, torch.device("cpu")) >= 0
        True
    """
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    step()
    if cuda:
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def _time_once(step: Callable[[], object], cuda: bool) -> float:
    if cuda:
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        stop.record()
        stop.synchronize()
        return start.elapsed_time(stop) / 1e3
    t0 = time.perf_counter()
    step()
    return time.perf_counter() - t0


def _summary(times: list[float], cuda: bool) -> TimingResult:
    return TimingResult(
        median=statistics.median(times), p10=quantile(times, 0.1), p90=quantile(times, 0.9),
        min=min(times), mean=statistics.fmean(times), repeats=len(times),
        clock="cuda_event" if cuda else "perf_counter",
    )
