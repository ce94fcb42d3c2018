"""One measurement: a provider on a case, giving one result row.

For one case and one provider, :func:`measure` does, in order: build the inputs
and the model; ``warmup`` untimed steps, the first of them timed on the wall
clock (``first_step_s``: compilation, for the compiling providers); one step
measured for peak memory; (training only) one forward under the saved-tensor
counter; the timed repeats (unless the caller times all providers of a case
together, interleaved: :func:`time_case`).

The first provider that runs a case stores its output and gradients in the
reference directory; every later provider is compared against them
(``rel_err`` = max over output, ∂u, ∂v of ‖x − ref‖/‖ref‖, the absolute error
where the reference is zero).
"""

from __future__ import annotations

from pathlib import Path

import torch

from deepres.benchmark.case import Case, make_inputs
from deepres.benchmark.memory import (
    SavedTensorCounter,
    current_rss_bytes,
    peak_rss_bytes,
    release_freed_memory,
    reset_peak_rss,
)
from deepres.benchmark.runner import Provider
from deepres.benchmark.timing import TimingOptions, time_interleaved, time_step, wall_time
from deepres.study.shared.files import atomic_write
from deepres.study.shared.store import read_torch_file

__all__ = ["RESULT_FIELDS", "empty_row", "measure", "progress_line", "set_time", "time_case"]

#: Fields of every result row (see bench/README.md for their meaning).
RESULT_FIELDS: tuple[str, ...] = (
    "provider", "case", "status", "reason", "time", "samples_per_s", "layer_updates_per_s",
    "tflops", "gbytes_per_s", "peak_bytes", "peak_method", "saved_bytes", "rel_err", "rel_err_vs",
    "speedup_vs_baseline", "peak_ratio_vs_baseline", "saved_ratio_vs_baseline", "first_step_s",
    "compile_s", "env",
)


def empty_row(provider: str, case: Case, **values: object) -> dict[str, object]:
    """A result row with every field of :data:`RESULT_FIELDS`, None but those given.

    Example:
        >>> row = empty_row("eager", Case(depth=2), status="skipped", reason="why")
        >>> row["status"], row["time"], len(row) == len(RESULT_FIELDS)
        ('skipped', None, True)
    """
    row: dict[str, object] = {name: None for name in RESULT_FIELDS}
    row.update(provider=provider, case=case.to_dict(), **values)
    return row


def _rel_err(ours: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> float:
    worst = 0.0
    for name, value in ref.items():
        mine = ours[name].to(torch.float64)
        value = value.to(torch.float64)
        norm = float(value.norm())
        diff = float((mine - value).norm())
        worst = max(worst, diff / norm if norm > 0 else diff)
    return worst


def _compare(case: Case, provider: str, outputs: dict[str, torch.Tensor],
             reference_dir: Path | None) -> tuple[float | None, str | None]:
    if reference_dir is None:
        return None, None
    path = reference_dir / f"{case.key()}.pt"
    if not path.exists():
        atomic_write(path, lambda handle: torch.save({"provider": provider, "outputs": outputs}, handle))
        return 0.0, provider
    stored = read_torch_file(path)
    return _rel_err(outputs, stored["outputs"]), stored["provider"]


def _first_line(error: Exception) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def measure(provider: Provider, case: Case, timing: TimingOptions,
            reference_dir: Path | None = None, isolated: bool = False, time_it: bool = True,
            ) -> dict[str, object]:
    """Run one provider on one case: peak memory, saved bytes, timing, agreement.

    Args:
        provider: the :class:`Provider`.
        case: the :class:`Case`.
        timing: the repeat policy (its ``warmup`` steps run before the memory step).
        reference_dir: where outputs are stored/compared (None: no comparison). Default None.
        isolated: whether this process runs this provider alone (makes the CPU peak
            RSS meaningful; recorded in ``peak_method``). Default False.
        time_it: also time the provider here (False when the harness times all
            providers of a case together, interleaved). Default True.

    Returns:
        A result row: a dict with the keys of :data:`RESULT_FIELDS` (ratios are filled later).

    Example:
        >>> from deepres.benchmark.providers import stack_providers
        >>> eager = stack_providers()[0]
        >>> row = measure(eager, Case(depth=2, batch=2, dim=2, hidden=2),
        ...               TimingOptions(min_repeats=1, max_repeats=1, min_time=0.0))
        >>> row["status"], row["saved_bytes"] > 0
        ('ok', True)
    """
    row = empty_row(provider.name, case, status="ok", env=dict(provider.env))
    reason = provider.unavailable_reason(case)
    if reason is not None:
        row.update(status="skipped", reason=reason)
        return row
    device = torch.device(case.device)
    cuda = device.type == "cuda"
    try:
        inputs = make_inputs(case)
        runner = provider.build(case, inputs)
        row["first_step_s"] = wall_time(runner.step, device)
        for _ in range(max(1, timing.warmup) - 1):
            runner.step()
        runner.clear()
    except Exception as error:  # a provider that cannot run here is reported, not fatal
        row.update(status="skipped", reason=f"failed to build or warm up: {_first_line(error)}")
        return row

    # Peak memory of one step.
    release_freed_memory()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = current_rss_bytes()
        resettable = reset_peak_rss()
    out = runner.step()
    if cuda:
        torch.cuda.synchronize(device)
        row["peak_bytes"] = int(torch.cuda.max_memory_allocated(device) - base)
        row["peak_method"] = "cuda_max_memory_allocated"
    else:
        peak = peak_rss_bytes()
        if base is not None and peak is not None:
            row["peak_bytes"] = max(0, int(peak - base))
        row["peak_method"] = ("rss_hwm" if resettable else "rss_hwm_lifetime") + (
            "" if isolated else "_shared_process")
    outputs = runner.outputs(out)
    del out
    runner.clear()
    row["rel_err"], row["rel_err_vs"] = _compare(case, provider.name, outputs, reference_dir)
    del outputs

    # Exact bytes saved for backward (training only).
    if case.mode == "train":
        try:
            counter = SavedTensorCounter(runner.params)
            with counter.track():
                out = runner.forward()
            del out
            if counter.count:
                row["saved_bytes"] = counter.nbytes
            else:  # a graph always saves something: these were saved out of the hooks' sight
                row["reason"] = ("saved bytes not measurable: no saved tensor passed through autograd's "
                                 "saved-tensor hooks (torch.compile's eager backends save them elsewhere)")
        except Exception as error:
            row["reason"] = f"saved-tensor accounting failed: {type(error).__name__}: {error}"
        runner.clear()

    if time_it:
        result = time_step(runner.step, device, TimingOptions(
            warmup=0, min_repeats=timing.min_repeats, max_repeats=timing.max_repeats,
            min_time=timing.min_time, max_time=timing.max_time))
        runner.clear()
        set_time(row, case, result.to_dict(), compiles=provider.compiles)
    return row


def set_time(row: dict[str, object], case: Case, times: dict[str, object], compiles: bool = False) -> None:
    """Store a timing (``TimingResult.to_dict()``) and the figures derived from its median in ``row``.

    Args:
        row: the result row (its ``first_step_s`` is read when ``compiles``).
        case: the row's :class:`Case`. times: the timing.
        compiles: the provider compiles at its first step: ``compile_s`` becomes
            ``first_step_s`` − the median step (at least 0). Default False.
    """
    median = float(times["median"])  # type: ignore[arg-type]
    row.update(
        time=times,
        samples_per_s=case.samples / median,
        layer_updates_per_s=case.layer_updates / median,
        tflops=case.model_flops() / median / 1e12,
        gbytes_per_s=case.model_bytes() / median / 1e9,
    )
    first = row.get("first_step_s")
    if compiles and first is not None:
        row["compile_s"] = max(0.0, float(first) - median)  # type: ignore[arg-type]


def time_case(providers: list[Provider], case: Case, timing: TimingOptions,
              ) -> dict[str, dict[str, object]]:
    """Time several providers on one case in interleaved rounds (see :func:`time_interleaved`).

    Args:
        providers: those to time (each must be able to run ``case``).
        case: the :class:`Case`. timing: the repeat policy.

    Returns:
        provider name → ``TimingResult.to_dict()``, or ``{"error": message}`` for a
        provider that failed to build or run.
    """
    inputs = make_inputs(case)
    out: dict[str, dict[str, object]] = {}
    steps = {}
    for provider in providers:
        try:
            runner = provider.build(case, inputs)
            runner.step()
            runner.clear()
        except Exception as error:
            out[provider.name] = {"error": f"{type(error).__name__}: {error}"}
            continue

        def step(runner=runner) -> None:
            runner.step()
            runner.clear()

        steps[provider.name] = step
    if steps:
        results = time_interleaved(steps, torch.device(case.device), timing, seed=case.seed)
        out.update({name: result.to_dict() for name, result in results.items()})
    return out


def _where(case: dict[str, object]) -> str:
    return f"L={case['depth']} B={case['batch']} D={case['dim']} M={case['hidden']} R={case['replicas']}"


def progress_line(row: dict[str, object]) -> str:
    """One line on a finished row (or ``{"case", "provider", "time"}`` timing record) for the log."""
    where = _where(row["case"])  # type: ignore[arg-type]
    if "status" not in row:  # a timing record
        times = row["time"]
        text = times.get("error") or f"{float(times['median']) * 1e3:.2f} ms"  # type: ignore[union-attr]
        return f"  {row['provider']:<26} {where}: {text}"
    if row["status"] != "ok":
        return f"  {row['provider']:<26} {where}: {row['status']}: {row['reason']}"
    peak = row["peak_bytes"]
    peak_text = "?" if peak is None else f"{peak / 2**20:.1f} MiB"  # type: ignore[operator]
    time_text = "" if row["time"] is None else f"{row['time']['median'] * 1e3:9.2f} ms, "  # type: ignore[index]
    first = row.get("first_step_s")
    first_text = "" if first is None else f", first step {first:.2f} s"
    return f"  {row['provider']:<26} {where}: {time_text}peak {peak_text}{first_text}"
