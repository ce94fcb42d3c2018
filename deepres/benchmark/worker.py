"""The benchmark's worker processes: what they read, what they write, how they are started.

A worker is ``python -m deepres.benchmark.worker --memory`` or ``--timing``; it
reads a JSON spec on stdin and appends one JSON line per result to the spec's
``output`` file (flushed after each, so that a worker that dies keeps what it
finished).

- ``--memory`` (:func:`memory_spec`): one provider over all cases, one
  :func:`deepres.benchmark.measure.measure` row per case.
- ``--timing`` (:func:`timing_spec`): for every job ``{"case", "providers"}``,
  the listed providers timed together in interleaved rounds; one line
  ``{"case", "provider", "time"}`` per provider.

Both specs carry the provider options (``checkpoint_policies``,
``compile_backend``), the timing policy and ``threads``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from deepres.benchmark.case import Case
from deepres.benchmark.config import BenchConfig
from deepres.benchmark.measure import empty_row, measure, progress_line, time_case
from deepres.benchmark.providers import providers_for
from deepres.benchmark.runner import Provider
from deepres.benchmark.timing import TimingOptions
from deepres.study.shared.files import file_mode

__all__ = ["memory_spec", "run_worker", "timing_spec"]


def _common(config: BenchConfig, output: Path) -> dict[str, object]:
    return {
        "checkpoint_policies": config.checkpoint_policies,
        "compile_backend": config.compile_backend,
        "timing": asdict(config.timing),
        "threads": config.threads,
        "output": str(output),
    }


def memory_spec(provider: str, config: BenchConfig, reference_dir: Path, output: Path) -> dict[str, object]:
    """The spec of a ``--memory`` worker: ``provider`` over every case of ``config``."""
    return {**_common(config, output), "provider": provider,
            "cases": [case.to_dict() for case in config.cases],
            "reference_dir": str(reference_dir), "time_it": not config.interleave}


def timing_spec(jobs: list[dict[str, object]], config: BenchConfig, output: Path) -> dict[str, object]:
    """The spec of a ``--timing`` worker; ``jobs``: ``[{"case": case dict, "providers": [names]}]``."""
    return {**_common(config, output), "jobs": jobs}


def run_worker(kind: str, spec: dict[str, object], env: dict[str, str], timeout: float,
               ) -> tuple[list[dict[str, object]], str | None]:
    """Start a worker, wait for it, read what it wrote.

    Args:
        kind: ``"memory"`` or ``"timing"``. spec: its spec.
        env: variables added to this process's environment.
        timeout: seconds the worker may take.

    Returns:
        (the JSON lines it wrote, why it failed or None).
    """
    failure = None
    try:
        completed = subprocess.run([sys.executable, "-m", "deepres.benchmark.worker", f"--{kind}"],
                                   input=json.dumps(spec), text=True, env={**os.environ, **env},
                                   timeout=timeout, stdout=subprocess.DEVNULL)
        if completed.returncode != 0:
            failure = f"{kind} worker process exited with status {completed.returncode}"
    except subprocess.TimeoutExpired:
        failure = f"{kind} worker process ran past its time limit, {timeout:g} s (set by --provider-timeout)"
    output = Path(str(spec["output"]))
    lines = [json.loads(line) for line in output.read_text().splitlines()] if output.exists() else []
    return lines, failure


def _providers(spec: dict[str, object], workload: str) -> dict[str, Provider]:
    found = providers_for(workload, spec["checkpoint_policies"],  # type: ignore[arg-type]
                          str(spec.get("compile_backend", "inductor")))
    return {p.name: p for p in found}


def _serve(spec: dict[str, object], rows: Callable[[], object]) -> int:
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))  # type: ignore[arg-type]
    # A stream of rows into the harness's private temporary folder: appended as they come
    # (no rename), but never through a link (the one rule of deepres.study.shared.files).
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    with os.fdopen(os.open(str(spec["output"]), flags, file_mode()), "a") as sink:
        for row in rows():  # type: ignore[attr-defined]
            sink.write(json.dumps(row) + "\n")
            sink.flush()
            print(progress_line(row), file=sys.stderr, flush=True)
    return 0


def _memory_rows(spec: dict[str, object]):
    cases = [Case(**c) for c in spec["cases"]]  # type: ignore[arg-type, union-attr]
    provider = _providers(spec, cases[0].workload)[str(spec["provider"])]
    timing = TimingOptions(**spec["timing"])  # type: ignore[arg-type]
    reference_dir = Path(str(spec["reference_dir"]))
    for case in cases:
        try:
            yield measure(provider, case, timing, reference_dir, isolated=True,
                          time_it=bool(spec.get("time_it", True)))
        except Exception as error:
            traceback.print_exc()
            yield empty_row(provider.name, case, status="error", reason=f"{type(error).__name__}: {error}")


def _timing_rows(spec: dict[str, object]):
    timing = TimingOptions(**spec["timing"])  # type: ignore[arg-type]
    for job in spec["jobs"]:  # type: ignore[union-attr]
        case = Case(**job["case"])
        by_name = _providers(spec, case.workload)
        results = time_case([by_name[name] for name in job["providers"]], case, timing)
        for name, times in results.items():
            yield {"case": case.to_dict(), "provider": name, "time": times}


def main(argv: list[str] | None = None) -> int:
    """The worker's command line: ``--memory`` or ``--timing``, the spec as JSON on stdin."""
    parser = argparse.ArgumentParser(prog="python -m deepres.benchmark.worker",
                                     description="deepres benchmark worker (internal; run `deepres bench`)")
    kind = parser.add_mutually_exclusive_group(required=True)
    kind.add_argument("--memory", action="store_true", help="measure one provider over the cases of a spec")
    kind.add_argument("--timing", action="store_true", help="time the providers of each job interleaved")
    args = parser.parse_args(argv)
    spec = json.loads(sys.stdin.read())
    return _serve(spec, lambda: _timing_rows(spec) if args.timing else _memory_rows(spec))


if __name__ == "__main__":
    sys.exit(main())
