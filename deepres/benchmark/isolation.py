"""Where each measurement runs: one process per provider for memory, shared processes for timing.

On the CPU every provider runs in its own worker process
(:mod:`deepres.benchmark.worker`), for all cases of the grid one after the other,
so that its peak resident memory is its own (see :mod:`deepres.benchmark.memory`).
Every worker draws the inputs from the same seed, so all providers see
bit-identical inputs. Then the providers of each case are timed together,
interleaved, in one process per distinct provider environment.
"""

from __future__ import annotations

import json
from pathlib import Path

from deepres.benchmark.case import Case
from deepres.benchmark.config import BenchConfig
from deepres.benchmark.measure import empty_row, set_time, time_case
from deepres.benchmark.runner import Provider
from deepres.benchmark.worker import memory_spec, run_worker, timing_spec

__all__ = ["MEMORY_WORKER_ENV", "run_isolated", "time_rows"]

#: Environment of the memory workers. Allocations of 128 KiB and more get their own
#: mapping, returned to the OS on free: the resident size then follows the live
#: tensors (see memory.py).
MEMORY_WORKER_ENV: dict[str, str] = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def _case_key(case: dict[str, object]) -> str:
    return json.dumps(case, sort_keys=True)


def run_isolated(provider: Provider, config: BenchConfig, tmp: Path) -> list[dict[str, object]]:
    """Measure ``provider`` on every case in a worker process of its own.

    A compiling provider gets empty compile caches under ``tmp``, so that its first
    step is a cold compile whatever earlier runs left in the user's caches.

    Returns:
        One row per case, in the order of ``config.cases`` (an error row for each case
        the worker did not finish).
    """
    output = tmp / f"rows-{provider.name}.jsonl"
    env = {**MEMORY_WORKER_ENV, **provider.env}
    if provider.compiles:
        env.update(TORCHINDUCTOR_CACHE_DIR=str(tmp / f"inductor-{provider.name}"),
                   TRITON_CACHE_DIR=str(tmp / f"triton-{provider.name}"))
    rows, failure = run_worker("memory", memory_spec(provider.name, config, tmp, output), env,
                               config.provider_timeout)
    done = {_case_key(row["case"]): row for row in rows}  # type: ignore[arg-type]
    return [done.get(_case_key(case.to_dict())) or
            empty_row(provider.name, case, status="error", reason=failure or "no result")
            for case in config.cases]


def time_rows(rows: list[dict[str, object]], config: BenchConfig, isolation: str, tmp: Path,
              ) -> dict[str, dict[str, str]]:
    """Time, interleaved, the providers whose memory step succeeded; fill their rows.

    Providers that need a different process environment (the compile providers'
    OpenMP wait policy) are timed in a process of their own, so that no provider's
    environment changes another's timing.

    Returns:
        provider → the environment variables its timing process set.
    """
    by_name = {p.name: p for p in config.selected_providers()}
    groups: dict[str, list[dict[str, object]]] = {}
    for case in config.cases:
        names = [row["provider"] for row in rows if row["case"] == case.to_dict() and row["status"] == "ok"]
        by_env: dict[str, list[str]] = {}
        for name in names:
            by_env.setdefault(json.dumps(by_name[name].env, sort_keys=True), []).append(name)
        for env_key, members in by_env.items():
            groups.setdefault(env_key, []).append({"case": case.to_dict(), "providers": members})
    results: list[dict[str, object]] = []
    failure = None
    timing_env: dict[str, dict[str, str]] = {}
    for index, (env_key, jobs) in enumerate(groups.items()):
        env_extra = json.loads(env_key)
        for job in jobs:
            for name in job["providers"]:  # type: ignore[union-attr]
                # Timed with the allocator users have: the memory workers' mmap threshold, which makes
                # the resident size follow the live tensors for the memory step, would make every large
                # buffer fault its pages in again at each step and bias times against them.
                timing_env[name] = dict(env_extra) if isolation == "subprocess" else {}
        if isolation == "subprocess":
            spec = timing_spec(jobs, config, tmp / f"timing-{index}.jsonl")
            found, error = run_worker("timing", spec, env_extra,
                                      config.provider_timeout * max(1, len(by_name)))
            results += found
            failure = error or failure
        else:
            for job in jobs:
                case = Case(**job["case"])  # type: ignore[arg-type]
                timed = time_case([by_name[name] for name in job["providers"]], case,  # type: ignore[union-attr]
                                  config.timing)
                results += [{"case": job["case"], "provider": name, "time": t} for name, t in timed.items()]
    found_times = {(_case_key(r["case"]), r["provider"]): r["time"] for r in results}  # type: ignore[arg-type]
    for row in rows:
        if row["status"] != "ok":
            continue
        times = found_times.get((_case_key(row["case"]), row["provider"]))  # type: ignore[arg-type]
        if times is None or "error" in times:  # type: ignore[operator]
            row.update(status="error", reason=(times or {}).get("error") or failure or "not timed")
        else:
            set_time(row, Case(**row["case"]), times,  # type: ignore[arg-type]
                     compiles=by_name[str(row["provider"])].compiles)
    return timing_env
