"""Run providers over a grid of cases and put the report together.

:func:`run_benchmark` records the environment and the device's ceilings, measures
every selected provider on every case (:mod:`deepres.benchmark.measure`; on the CPU
one worker process per provider, :mod:`deepres.benchmark.isolation`), times the
providers of each case together, then adds the ratios to the baseline and the
growth exponents (:mod:`deepres.benchmark.growth`).
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from deepres.benchmark.ceilings import measure_ceilings
from deepres.benchmark.config import BenchConfig
from deepres.benchmark.environment import environment, load_average
from deepres.benchmark.growth import add_ratios, growth_fits
from deepres.benchmark.isolation import run_isolated, time_rows
from deepres.benchmark.measure import empty_row, measure, progress_line
from deepres.benchmark.providers import baseline_provider

__all__ = ["run_benchmark"]


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_benchmark(config: BenchConfig, argv: Sequence[str] | None = None, quick: bool = False,
                  log: Callable[[str], None] | None = None) -> dict[str, object]:
    """Run every selected provider on every case; return the full report.

    Args:
        config: the :class:`BenchConfig`.
        argv: the command line recorded in the report (default ``sys.argv``).
        quick: smaller ceiling measurements. Default False.
        log: progress sink (default: stderr).

    Returns:
        ``{"environment", "ceilings", "config", "baseline", "results", "growth"}``;
        ``results`` holds one row per (provider, case) with the keys of
        :data:`deepres.benchmark.measure.RESULT_FIELDS`.

    Example:
        >>> from deepres.benchmark.case import Case
        >>> from deepres.benchmark.timing import TimingOptions
        >>> report = run_benchmark(BenchConfig([Case(depth=4, batch=2, dim=2, hidden=2)],
        ...     providers=["eager", "deepres-torch"], isolation="inprocess",
        ...     timing=TimingOptions(min_repeats=1, max_repeats=1, min_time=0.0)), log=lambda s: None)
        >>> [row["status"] for row in report["results"]]
        ['ok', 'ok']
    """
    log = log or _stderr
    device = config.cases[0].device
    isolation = config.isolation
    if isolation == "auto":
        isolation = "subprocess" if device == "cpu" else "inprocess"
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    env = environment(argv, device)
    log(f"deepres bench: {len(config.cases)} case(s) on {env['device_name']}, isolation={isolation}")
    ceilings = measure_ceilings(device, config.cases[0].torch_dtype, quick=quick)
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="deepres-bench-") as tmp:
        reference_dir = Path(tmp)
        for provider in config.selected_providers():
            log(f"{provider.name}: {provider.description}")
            if isolation == "subprocess" or provider.name in config.excluded:
                reasons = [config.excluded.get(provider.name) or provider.unavailable_reason(case)
                           for case in config.cases]
                if all(reasons):  # no process needed to say why
                    for case, reason in zip(config.cases, reasons, strict=True):
                        row = empty_row(provider.name, case, status="skipped", reason=reason,
                                        env=dict(provider.env))
                        rows.append(row)
                        log(progress_line(row))
                    continue
                rows.extend(run_isolated(provider, config, reference_dir))
            else:
                for case in config.cases:
                    row = measure(provider, case, config.timing, reference_dir, time_it=not config.interleave)
                    log(progress_line(row))
                    rows.append(row)
        timing_env: dict[str, dict[str, str]] = {}
        if config.interleave:
            log("timing: every provider of a case in interleaved rounds")
            timing_env = time_rows(rows, config, isolation, reference_dir)
    baseline = baseline_provider(config.workload)
    add_ratios(rows, baseline)
    env["load_average_end"] = load_average()
    return {
        "environment": env,
        "ceilings": ceilings,
        "config": {
            "workload": config.workload,
            "providers": [p.name for p in config.selected_providers()],
            "checkpoint_policies": config.checkpoint_policies,
            "compile_backend": config.compile_backend,
            "timing": asdict(config.timing),
            "isolation": isolation,
            "interleave": config.interleave,
            "timing_env": timing_env,
            "threads": config.threads,
        },
        "baseline": baseline,
        "results": rows,
        "growth": growth_fits(rows),
    }
