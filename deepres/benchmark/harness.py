"""Run providers over a grid of cases, in one process or one process per provider.

On the CPU every provider runs in its own worker process (``python -m
deepres.benchmark.harness``), for all cases of the grid one after the other, so
that its peak resident memory is its own (see :mod:`deepres.benchmark.memory`).
Every worker draws the inputs from the same seed, so all providers see
bit-identical inputs. The first provider that runs a case (the baseline, when
it runs) stores its output and gradients; every later provider is compared
against them (``rel_err`` = max over output, ∂u, ∂v of ‖x − ref‖/‖ref‖).

For one case and one provider the worker does, in order: build the inputs and
the model; ``warmup`` untimed steps; one step measured for peak memory; (training
only) one forward under the saved-tensor counter; the timed repeats.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from deepres.benchmark.memory import (
    SavedTensorCounter,
    current_rss_bytes,
    peak_rss_bytes,
    release_freed_memory,
    reset_peak_rss,
)
from deepres.benchmark.providers import Case, Provider, baseline_provider, make_inputs, providers_for
from deepres.benchmark.timing import TimingOptions, time_interleaved, time_step

__all__ = [
    "RESULT_FIELDS",
    "BenchConfig",
    "environment",
    "fit_growth",
    "measure",
    "measure_ceilings",
    "run_benchmark",
]

#: Fields of every result row (see bench/README.md for their meaning).
RESULT_FIELDS: tuple[str, ...] = (
    "provider", "case", "status", "reason", "time", "samples_per_s", "layer_updates_per_s",
    "tflops", "gbytes_per_s", "peak_bytes", "peak_method", "saved_bytes", "rel_err", "rel_err_vs",
    "speedup_vs_baseline", "peak_ratio_vs_baseline", "saved_ratio_vs_baseline", "env",
)

# Allocations of 128 KiB and more get their own mapping, returned to the OS on
# free: the resident size then follows the live tensors (see memory.py).
_WORKER_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


@dataclass
class BenchConfig:
    """What to run.

    Args:
        cases: the grid (all of one workload).
        providers: names to run (None: every provider of the workload). Default None.
        checkpoint_policies: ``checkpoint_every`` values of the deepres engines.
            Default ``[None, "sqrt"]``.
        timing: the repeat policy. Default :class:`TimingOptions()`.
        isolation: ``"subprocess"`` (one process per provider: CPU peak memory),
            ``"inprocess"``, or ``"auto"`` (default: subprocess on CPU, in-process on CUDA).
        provider_timeout: seconds one provider's worker may take for the whole grid.
            Default 1800.
        threads: ``torch.set_num_threads`` for the measurements (None: PyTorch's
            default, one per core). Default None.
        interleave: time all providers of a case together, in rounds of one step
            each in shuffled order (one process), after the memory measurements;
            False times each provider right after its memory step. Default True.
        excluded: provider name → why it is left out of this run (listed as
            skipped with that reason). Default empty.
    """

    cases: list[Case]
    providers: list[str] | None = None
    checkpoint_policies: list[int | str | None] = field(default_factory=lambda: [None, "sqrt"])
    timing: TimingOptions = field(default_factory=TimingOptions)
    isolation: str = "auto"
    provider_timeout: float = 1800.0
    threads: int | None = None
    interleave: bool = True
    excluded: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.cases:
            raise ValueError("cases must be a non-empty list of Case")
        workloads = {case.workload for case in self.cases}
        if len(workloads) != 1:
            raise ValueError(f"all cases must share one workload; got {sorted(workloads)}")
        if self.isolation not in ("auto", "subprocess", "inprocess"):
            raise ValueError(f"isolation must be 'auto', 'subprocess' or 'inprocess'; got {self.isolation!r}")

    @property
    def workload(self) -> str:
        return self.cases[0].workload

    def selected_providers(self) -> list[Provider]:
        available = providers_for(self.workload, self.checkpoint_policies)
        if self.providers is None:
            return available
        names = [p.name for p in available]
        unknown = [name for name in self.providers if name not in names]
        if unknown:
            raise ValueError(f"providers {unknown} are not providers of the {self.workload} workload; "
                             f"choose from {names}")
        return [p for p in available if p.name in self.providers]


# ---------------------------------------------------------------------------- one measurement


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
        torch.save({"provider": provider, "outputs": outputs}, path)
        return 0.0, provider
    stored = torch.load(path)
    return _rel_err(outputs, stored["outputs"]), stored["provider"]


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
    """
    row: dict[str, object] = {name: None for name in RESULT_FIELDS}
    row.update(provider=provider.name, case=case.to_dict(), status="ok", env=dict(provider.env))
    reason = provider.unavailable_reason(case)
    if reason is not None:
        row.update(status="skipped", reason=reason)
        return row
    device = torch.device(case.device)
    cuda = device.type == "cuda"
    try:
        inputs = make_inputs(case)
        runner = provider.build(case, inputs)
        for _ in range(max(1, timing.warmup)):
            runner.step()
        runner.clear()
    except Exception as error:  # a provider that cannot run here is reported, not fatal
        row.update(status="skipped", reason=f"failed to build or warm up: {type(error).__name__}: "
                                            f"{str(error).splitlines()[0] if str(error) else ''}")
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
            row["saved_bytes"] = counter.nbytes
        except Exception as error:
            row["reason"] = f"saved-tensor accounting failed: {type(error).__name__}: {error}"
        runner.clear()

    if time_it:
        result = time_step(runner.step, device, TimingOptions(
            warmup=0, min_repeats=timing.min_repeats, max_repeats=timing.max_repeats,
            min_time=timing.min_time, max_time=timing.max_time))
        runner.clear()
        set_time(row, case, result.to_dict())
    return row


def set_time(row: dict[str, object], case: Case, times: dict[str, object]) -> None:
    """Store a timing (``TimingResult.to_dict()``) and the figures derived from its median in ``row``."""
    median = float(times["median"])  # type: ignore[arg-type]
    row.update(
        time=times,
        samples_per_s=case.samples / median,
        layer_updates_per_s=case.layer_updates / median,
        tflops=case.model_flops() / median / 1e12,
        gbytes_per_s=case.model_bytes() / median / 1e9,
    )


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


# ------------------------------------------------------------------------------- worker process


def _worker(spec: dict[str, object]) -> int:
    cases = [Case(**c) for c in spec["cases"]]  # type: ignore[arg-type, union-attr]
    policies = spec["checkpoint_policies"]
    provider = next(p for p in providers_for(cases[0].workload, policies)  # type: ignore[arg-type]
                    if p.name == spec["provider"])
    timing = TimingOptions(**spec["timing"])  # type: ignore[arg-type]
    reference_dir = Path(str(spec["reference_dir"]))
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))  # type: ignore[arg-type]
    with open(str(spec["output"]), "a") as sink:
        for case in cases:
            try:
                row = measure(provider, case, timing, reference_dir, isolated=True,
                              time_it=bool(spec.get("time_it", True)))
            except Exception as error:
                row = {name: None for name in RESULT_FIELDS}
                row.update(provider=provider.name, case=case.to_dict(), status="error",
                           reason=f"{type(error).__name__}: {error}")
                traceback.print_exc()
            sink.write(json.dumps(row) + "\n")
            sink.flush()
            _progress(row)
    return 0


def _timing_worker(spec: dict[str, object]) -> int:
    """Time the listed providers of every case together (``spec["jobs"]``: case → names)."""
    policies = spec["checkpoint_policies"]
    timing = TimingOptions(**spec["timing"])  # type: ignore[arg-type]
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))  # type: ignore[arg-type]
    with open(str(spec["output"]), "a") as sink:
        for job in spec["jobs"]:  # type: ignore[union-attr]
            case = Case(**job["case"])
            by_name = {p.name: p for p in providers_for(case.workload, policies)}  # type: ignore[arg-type]
            results = time_case([by_name[name] for name in job["providers"]], case, timing)
            for name, times in results.items():
                sink.write(json.dumps({"case": case.to_dict(), "provider": name, "time": times}) + "\n")
                sink.flush()
                text = times.get("error") or f"{float(times['median']) * 1e3:.2f} ms"
                print(f"  {name:<26} L={case.depth} B={case.batch} D={case.dim} M={case.hidden} "
                      f"R={case.replicas}: {text}", file=sys.stderr, flush=True)
    return 0


def _progress(row: dict[str, object]) -> None:
    case = row["case"]
    where = f"L={case['depth']} B={case['batch']} D={case['dim']} M={case['hidden']} R={case['replicas']}"
    if row["status"] == "ok":
        peak = row["peak_bytes"]
        peak_text = "?" if peak is None else f"{peak / 2**20:.1f} MiB"
        time_text = "" if row["time"] is None else f"{row['time']['median'] * 1e3:9.2f} ms, "
        print(f"  {row['provider']:<26} {where}: {time_text}peak {peak_text}", file=sys.stderr, flush=True)
    else:
        print(f"  {row['provider']:<26} {where}: {row['status']}: {row['reason']}", file=sys.stderr,
              flush=True)


def _run_isolated(provider: Provider, config: BenchConfig, reference_dir: Path) -> list[dict[str, object]]:
    output = reference_dir / f"rows-{provider.name}.jsonl"
    spec = {
        "provider": provider.name,
        "cases": [case.to_dict() for case in config.cases],
        "checkpoint_policies": config.checkpoint_policies,
        "timing": asdict(config.timing),
        "reference_dir": str(reference_dir),
        "output": str(output),
        "threads": config.threads,
        "time_it": not config.interleave,
    }
    env = {**os.environ, **_WORKER_ENV, **provider.env}
    failure = None
    try:
        completed = subprocess.run([sys.executable, "-m", "deepres.benchmark.harness", "--worker"],
                                   input=json.dumps(spec), text=True, env=env,
                                   timeout=config.provider_timeout, stdout=subprocess.DEVNULL)
        if completed.returncode != 0:
            failure = f"worker process exited with status {completed.returncode}"
    except subprocess.TimeoutExpired:
        failure = f"worker process ran past --provider-timeout {config.provider_timeout:g} s"
    rows = [json.loads(line) for line in output.read_text().splitlines()] if output.exists() else []
    done = {json.dumps(row["case"], sort_keys=True) for row in rows}
    for case in config.cases:
        if json.dumps(case.to_dict(), sort_keys=True) not in done:
            row = {name: None for name in RESULT_FIELDS}
            row.update(provider=provider.name, case=case.to_dict(), status="error",
                       reason=failure or "no result")
            rows.append(row)
    return rows


def _time_rows(rows: list[dict[str, object]], config: BenchConfig, isolation: str, tmp: Path,
               ) -> dict[str, dict[str, str]]:
    """Time, interleaved, the providers whose memory step succeeded; fill their rows.

    Providers that need a different process environment (the compile providers'
    OpenMP wait policy) are timed in a process of their own, so that no provider's
    environment changes another's timing. Returns provider → the environment
    variables its timing process set.
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
            for name in job["providers"]:
                # Timed with the allocator users have: _WORKER_ENV's mmap threshold, which makes the
                # resident size follow the live tensors for the memory step, would make every large
                # buffer fault its pages in again at each step and bias times against them.
                timing_env[name] = dict(env_extra) if isolation == "subprocess" else {}
        if isolation == "subprocess":
            output = tmp / f"timing-{index}.jsonl"
            spec = {"jobs": jobs, "checkpoint_policies": config.checkpoint_policies,
                    "timing": asdict(config.timing), "threads": config.threads, "output": str(output)}
            try:
                completed = subprocess.run(
                    [sys.executable, "-m", "deepres.benchmark.harness", "--timing-worker"],
                    input=json.dumps(spec), text=True, env={**os.environ, **env_extra},
                    timeout=config.provider_timeout * max(1, len(by_name)), stdout=subprocess.DEVNULL)
                if completed.returncode != 0:
                    failure = f"timing process exited with status {completed.returncode}"
            except subprocess.TimeoutExpired:
                failure = "timing process ran past its time limit"
            if output.exists():
                results += [json.loads(line) for line in output.read_text().splitlines()]
        else:
            for job in jobs:
                case = Case(**job["case"])
                timed = time_case([by_name[name] for name in job["providers"]], case, config.timing)
                results += [{"case": job["case"], "provider": name, "time": t} for name, t in timed.items()]
    found = {(json.dumps(r["case"], sort_keys=True), r["provider"]): r["time"] for r in results}
    for row in rows:
        if row["status"] != "ok":
            continue
        times = found.get((json.dumps(row["case"], sort_keys=True), row["provider"]))
        if times is None or "error" in times:
            row.update(status="error", reason=(times or {}).get("error") or failure or "not timed")
        else:
            set_time(row, Case(**row["case"]), times)
    return timing_env


# ---------------------------------------------------------------------------------- the report


def _git(*args: str) -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(argv: Sequence[str] | None = None, device: str = "cpu") -> dict[str, object]:
    """Where and how a result was produced.

    Args:
        argv: the full command line (default: the interpreter and ``sys.argv``).
        device: ``"cpu"`` or ``"cuda"``. Default ``"cpu"``.

    Returns:
        device name, core count, threads, versions, git commit (and whether the
        tree had uncommitted changes), the full command line, the UTC time.
    """
    argv = [sys.executable, *sys.argv] if argv is None else list(argv)
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "device": device,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else _cpu_name(),
        "cpu_name": _cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "triton": _version("triton"),
            "numpy": np.__version__,
            "torchdiffeq": _version("torchdiffeq"),
            "deepres": _version("deepres"),
        },
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "command": shlex.join(argv),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        # Other processes share the CPU: the 1/5/15-minute load averages at the start.
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
    }


def measure_ceilings(device: str, dtype: torch.dtype = torch.float32, quick: bool = False,
                     ) -> dict[str, float]:
    """Measured ceilings of the device: copy bandwidth (GB/s) and matmul throughput (TFLOP/s).

    Args:
        device: ``"cpu"`` or ``"cuda"``. dtype: of the matmul. Default float32.
        quick: smaller sizes (CPU quick runs). Default False.

    Returns:
        ``{"copy_gbytes_per_s": ..., "matmul_tflops": ...}``.
    """
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    numel = (1 << 28) if cuda else (1 << (22 if quick else 24))
    src = torch.randn(numel, device=dev)
    dst = torch.empty_like(src)
    options = TimingOptions(warmup=2, min_repeats=5, max_repeats=20, min_time=0.2, max_time=2.0)
    copy = time_step(lambda: dst.copy_(src), dev, options).median
    n = 8192 if cuda else (512 if quick else 1024)
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    mm = time_step(lambda: a @ b, dev, options).median
    return {"copy_gbytes_per_s": 2 * src.numel() * src.element_size() / copy / 1e9,
            "matmul_tflops": 2 * n**3 / mm / 1e12, "matmul_size": n, "matmul_dtype": str(dtype)}


def _case_without_depth(case: dict[str, object]) -> str:
    return json.dumps({k: v for k, v in case.items() if k != "depth"}, sort_keys=True)


def fit_growth(depths: Sequence[float], values: Sequence[float]) -> float | None:
    """Least-squares slope of log(value) against log(depth): the growth exponent in L.

    Returns None with fewer than two distinct depths or a non-positive value.

    Example:
        >>> round(fit_growth([64, 128, 256], [1.0, 2.0, 4.0]), 6)
        1.0
    """
    if len(set(depths)) < 2 or any(v is None or not v > 0 for v in values):
        return None
    slope, _ = np.polyfit(np.log(np.asarray(depths, float)), np.log(np.asarray(values, float)), 1)
    return float(slope)


def _add_ratios_and_fits(rows: list[dict[str, object]], baseline: str) -> list[dict[str, object]]:
    base = {json.dumps(r["case"], sort_keys=True): r for r in rows
            if r["provider"] == baseline and r["status"] == "ok"}
    for row in rows:
        ref = base.get(json.dumps(row["case"], sort_keys=True))
        if row["status"] != "ok" or ref is None:
            continue
        row["speedup_vs_baseline"] = ref["time"]["median"] / row["time"]["median"]
        for key, ratio in (("peak_bytes", "peak_ratio_vs_baseline"),
                           ("saved_bytes", "saved_ratio_vs_baseline")):
            if ref[key] and row[key]:
                row[ratio] = ref[key] / row[key]
    groups: dict[tuple[str, str], list[dict[str, object]]] = {}
    for row in rows:
        if row["status"] == "ok":
            groups.setdefault((row["provider"], _case_without_depth(row["case"])), []).append(row)
    fits = []
    for (provider, case_key), members in groups.items():
        depths = [m["case"]["depth"] for m in members]
        if len(set(depths)) < 2:
            continue
        fit = {"provider": provider, "case": json.loads(case_key), "depths": sorted(depths)}
        for metric, get in (("time", lambda m: m["time"]["median"]),
                            ("peak_bytes", lambda m: m["peak_bytes"]),
                            ("saved_bytes", lambda m: m["saved_bytes"])):
            fit[f"{metric}_exponent"] = fit_growth(depths, [get(m) for m in members])
        fits.append(fit)
    return fits


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
        :data:`RESULT_FIELDS`.

    Example:
        >>> from deepres.benchmark.providers import Case
        >>> report = run_benchmark(BenchConfig([Case(depth=4, batch=2, dim=2, hidden=2)],
        ...     providers=["eager", "deepres-torch"], isolation="inprocess",
        ...     timing=TimingOptions(min_repeats=1, max_repeats=1, min_time=0.0)), log=lambda s: None)
        >>> [row["status"] for row in report["results"]]
        ['ok', 'ok']
    """
    def default_log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    log = log or default_log
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
                        row = {name: None for name in RESULT_FIELDS}
                        row.update(provider=provider.name, case=case.to_dict(), status="skipped",
                                   reason=reason, env=dict(provider.env))
                        rows.append(row)
                        _progress(row)
                    continue
                rows.extend(_run_isolated(provider, config, reference_dir))
            else:
                for case in config.cases:
                    row = measure(provider, case, config.timing, reference_dir, time_it=not config.interleave)
                    _progress(row)
                    rows.append(row)
        timing_env: dict[str, dict[str, str]] = {}
        if config.interleave:
            log("timing: every provider of a case in interleaved rounds")
            timing_env = _time_rows(rows, config, isolation, reference_dir)
    baseline = baseline_provider(config.workload)
    growth = _add_ratios_and_fits(rows, baseline)
    env["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return {
        "environment": env,
        "ceilings": ceilings,
        "config": {
            "workload": config.workload,
            "providers": [p.name for p in config.selected_providers()],
            "checkpoint_policies": config.checkpoint_policies,
            "timing": asdict(config.timing),
            "isolation": isolation,
            "interleave": config.interleave,
            "timing_env": timing_env,
            "threads": config.threads,
        },
        "baseline": baseline,
        "results": rows,
        "growth": growth,
    }


def _main() -> int:
    parser = argparse.ArgumentParser(description="deepres benchmark worker (internal)")
    parser.add_argument("--worker", action="store_true", help="read a job spec as JSON on stdin")
    parser.add_argument("--timing-worker", action="store_true",
                        help="read an interleaved-timing spec as JSON on stdin")
    args = parser.parse_args()
    if args.timing_worker:
        return _timing_worker(json.loads(sys.stdin.read()))
    if not args.worker:
        parser.error("this module is the benchmark's worker; run `deepres bench` instead")
    return _worker(json.loads(sys.stdin.read()))


if __name__ == "__main__":
    sys.exit(_main())
