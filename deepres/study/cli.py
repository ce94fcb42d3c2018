"""``deepres study``: run a ResNet-vs-limit convergence study and write its report.

Usage (the ``quick`` preset runs on a 2-core CPU in a few minutes)::

    deepres study --preset quick --out study-quick
    python -m deepres.study --preset quick --out study-quick      # the same

Rerunning the same command resumes: finished units are read back from
``OUT/units/`` and only the missing ones run (a result file that cannot be read
back is renamed to ``*.corrupt`` and its unit runs again). A result is resumed only
by a run with the same ``--backend`` and device type. One study at a time writes
into an output folder: a second one exits with a message, or waits with ``--wait``.
Every flag overrides one field of the preset
(:class:`deepres.study.presets.StudyConfig`). Every option is checked before any
work starts; a bad one is reported on one line naming it, with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from deepres.activations import ACTIVATIONS
from deepres.cli_checks import (
    OptionError,
    check_backend,
    check_device,
    check_out_folder,
    float_in,
    int_at_least,
    ints_at_least,
    one_of,
    positive_floats,
    print_error,
)
from deepres.functional import BACKENDS
from deepres.study import phase_cli
from deepres.study.compare import SOLVERS
from deepres.study.data import TASKS
from deepres.study.files import OutputLock, run_locked
from deepres.study.presets import PRESETS, StudyConfig, preset
from deepres.study.report import summary, write_json, write_report
from deepres.study.shapes import cli as shapes_cli
from deepres.study.sweep import Executor, LocalExecutor

__all__ = ["check_options", "configure_parser", "main", "run_study"]


# Each option's type checks its values, so that argparse rejects a bad one before any work.
_ints = ints_at_least(1)
_floats = positive_floats()

#: flag → (config field, parser, help).
_AXES: dict[str, tuple[str, Any, str]] = {
    "--depths": ("depths", _ints, "depths L, comma-separated"),
    "--widths": ("widths", _ints, "hidden widths M"),
    "--dims": ("dims", _ints, "embedding dimensions D"),
    "--alphas": ("alphas", _floats, "scales α"),
    "--etas": ("etas", _floats, "base learning rates η"),
    "--steps": ("steps", ints_at_least(0), "numbers of GD steps"),
    "--seeds": ("seeds", ints_at_least(None), "seeds of data, embedding and limit"),
    "--replicas": ("replicas", int_at_least(2), "replicas R per (L, M, ...), even with antithetic pairs"),
    "--particles": ("particles", int_at_least(2), "particles K per limit set (even)"),
    "--grid-steps": ("grid_steps", int_at_least(2), "steps N of the limit's depth grid"),
    "--limit-sets": ("limit_sets", int_at_least(2), "independent particle sets averaged into the limit"),
    "--solver": ("solver", one_of(SOLVERS), "limit solver: euler, midpoint, rk4 (default: rk4 with "
                 "MeanODENet)"),
    "--particle-init": ("particle_init", one_of(("sobol", "antithetic")),
                        "limit particles: sobol or antithetic (default: sobol)"),
    "--task": ("task", one_of(TASKS), "task: paper or teacher"),
    "--samples": ("samples", int_at_least(1), "number of samples N"),
    "--activation": ("activation", one_of(ACTIVATIONS), f"activation σ: {', '.join(ACTIVATIONS)}"),
    "--records": ("records", int_at_least(1), "recorded steps, evenly spaced from 0 to the last"),
    "--lazy-alphas": ("lazy_alphas", positive_floats(allow_empty=True),
                      "α values of the lazy sweep (empty string: skip)"),
    "--lazy-depth": ("lazy_depth", int_at_least(1), "L of the lazy sweep"),
    "--lazy-hidden": ("lazy_hidden", int_at_least(2), "M of the lazy sweep (even)"),
    "--lazy-replicas": ("lazy_replicas", int_at_least(1), "replicas of the lazy sweep"),
    "--lazy-fit-min": ("lazy_fit_min", float_in(0, math.inf),
                       "fit the lazy-ODE distance from this α on (its 1/α² range)"),
    "--alpha-axis": ("alpha_axis", positive_floats(allow_empty=True),
                     "α values of the α axis (empty string: skip)"),
    "--alpha-axis-depth": ("alpha_axis_depth", int_at_least(1), "L of the α axis"),
    "--alpha-axis-hidden": ("alpha_axis_hidden", int_at_least(1), "M of the α axis"),
    "--alpha-fit": ("alpha_fit", _floats, "low,high: the α range of the fluctuation_vs_alpha fit"),
    "--bootstrap": ("bootstrap", int_at_least(2), "bootstrap draws per fit (a CI needs 2 or more)"),
    "--ref-ratio": ("ref_ratio", float_in(0, 1), "fit a point only if reference error ≤ ratio × error, "
                    "in (0, 1]"),
}


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``deepres study`` options to ``parser``."""
    parser.add_argument("--preset", choices=sorted([*PRESETS, "phase", "shapes"]), default="quick",
                        help="base configuration (default: quick); phase: the phase diagram of residual "
                             "multiplier and learning rate (deepres.study.phase_cli); shapes: the joint "
                             "(L, M, D) limit (deepres.study.shapes.cli)")
    parser.add_argument("--seed", type=int, default=None, help="a single seed (same as --seeds N)")
    for flag, (_, kind, text) in _AXES.items():
        parser.add_argument(flag, type=kind, default=None, help=f"{text} (default: the preset's)")
    parser.add_argument("--antithetic", action=argparse.BooleanOptionalAction, default=None,
                        help="replicas in antithetic pairs (default: the preset's, on)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default=None,
                        help="dtype of the networks (default: the preset's, float32)")
    parser.add_argument("--device", default=None,
                        help="torch device (default: cpu; cuda with --executor ray when the cluster has "
                             "GPUs, one per task)")
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="stack backend (default: auto). Results are resumed only by a run with the same "
                             "backend and device type")
    parser.add_argument("--out", default="study-out", help="output directory (default: study-out)")
    parser.add_argument("--wait", action="store_true",
                        help="if another study is writing into --out, wait for it to end (default: exit "
                             "with a message)")
    parser.add_argument("--no-plots", action="store_true", help="do not write PNG plots")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--executor", choices=["local", "ray"], default="local",
                        help="where units run: local (this process, one after the other) or ray (one Ray "
                             "task per unit, needs pip install 'deepres[ray]') (default: local)")
    parser.add_argument("--address", default=None,
                        help="with --executor ray: address of a running Ray cluster (e.g. 'auto' on a node "
                             "of one); default: start a local Ray instance for this run and stop it after")
    parser.add_argument("--max-retries", type=int_at_least(0), default=2,
                        help="with --executor ray: reruns of a unit whose worker died before it is "
                             "reported failed (default: 2)")
    parser.add_argument("--threads", type=int_at_least(1), default=None,
                        help="torch CPU threads (default: 1 on CPU, where the study's small tensors run "
                             "faster on one thread than on several; torch's default elsewhere)")
    phase_cli.add_phase_arguments(parser)
    shapes_cli.add_shapes_arguments(parser)


def config_from_args(args: argparse.Namespace) -> StudyConfig:
    """The :class:`StudyConfig` of the preset with the flags given applied."""
    overrides: dict[str, Any] = {}
    for flag, (name, _, _) in _AXES.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            overrides[name] = value
    if args.seed is not None:
        overrides["seeds"] = [args.seed]
    if args.antithetic is not None:
        overrides["antithetic"] = args.antithetic
    if args.dtype is not None:
        overrides["dtype"] = args.dtype
    return preset(args.preset, **overrides)


def _versions(device: str) -> dict[str, Any]:
    import numpy

    import deepres

    info: dict[str, Any] = {"deepres": deepres.__version__, "torch": torch.__version__,
                            "numpy": numpy.__version__, "python": platform.python_version(),
                            "platform": platform.platform(), "processor": platform.processor(),
                            "torch_threads": torch.get_num_threads(), "device": device}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name(torch.device(device))
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    return info


def run_study(config: StudyConfig, out: str | Path, *, device: str = "cpu", backend: str = "auto",
              progress: bool = True, plots: bool = True, executor: Executor | None = None,
              estimate: bool = True, wait: bool = False) -> dict[str, Any]:
    """Run (or resume) a study, analyze it and write its report to ``out``.

    The output folder is locked for the whole run (:class:`~deepres.study.files.OutputLock`).

    Args:
        config: the study. out: output directory.
        device: Default ``"cpu"``. backend: stack backend. Default ``"auto"``. Both are
            part of every stored result's key: results of another backend or device type
            are not resumed.
        progress: tqdm bar. Default True. plots: write PNGs. Default True.
        executor: where the units run. Default None: :class:`~deepres.study.sweep.LocalExecutor`.
        estimate: before any unit runs, time one probe per kind of unit on this machine
            and print the predicted total time (:mod:`deepres.study.estimate`); the bar
            then counts the calibrated seconds. Default True.
        wait: when another process holds the lock on ``out``, wait for it. Default
            False: raise :class:`~deepres.study.files.FolderLockedError`.

    Returns:
        The report dict written to ``out/study.json``, with ``unit_identity`` (the backend
        and device type the results are keyed by) and ``corrupt_files`` (stored results
        that could not be read back: renamed to ``*.corrupt`` and recomputed). When units
        failed (see :class:`~deepres.study.ray_executor.RayExecutor`), the report lists them
        under ``failed_units`` and holds no analysis, which needs every unit; rerun to retry them.
    """
    with OutputLock(out).held(wait=wait):
        return _run_study_locked(config, out, device=device, backend=backend, progress=progress,
                                 plots=plots, executor=executor, estimate=estimate)


def _run_study_locked(config: StudyConfig, out: str | Path, *, device: str, backend: str, progress: bool,
                      plots: bool, executor: Executor | None, estimate: bool) -> dict[str, Any]:
    from deepres.study.analysis import analyze
    from deepres.study.sweep import ResultStore, run_units

    store = ResultStore(out, device=device, backend=backend)
    units = config.units()
    todo = [u for u in units if not store.has(u)]
    start = time.perf_counter()
    predicted, cost = _estimate(todo, device=device, backend=backend) if estimate and todo else (None, None)
    calibrated = time.perf_counter()
    counts = run_units(units, store, executor=executor, device=device, backend=backend, progress=progress,
                       cost=cost)
    ran = time.perf_counter() - calibrated
    report = {
        "config": config.as_dict(),
        "unit_identity": store.identity,
        "limit": {"model": "MeanODENet (ODE-adjoint gradient)", "solver": config.resolved_solver,
                  "particle_init": config.resolved_particle_init, "particles": config.particles,
                  "grid_steps": config.grid_steps, "sets": config.limit_sets},
        "environment": _versions(device) | {"executor": type(executor or LocalExecutor()).__name__},
        "units": counts,
        "corrupt_files": store.corrupt,
        "wall_seconds": {"run": ran, "total": time.perf_counter() - start},
    }
    if predicted is not None:
        report["estimate"] = predicted | {"calibration_seconds": calibrated - start,
                                          "measured_seconds": ran,
                                          "measured_unit_seconds": _unit_seconds(store, todo)}
    elif not todo:
        # Everything was read back: keep the estimate of the run that computed the units.
        previous = _previous_estimate(Path(out) / "study.json")
        if previous is not None:
            report["estimate"] = previous | {"from_an_earlier_run": True}
    if counts["failed"]:
        report["failed_units"] = store.failures()
        write_json(report, Path(out) / "study.json")
        return report
    report |= analyze(config, store)
    write_report(report, out, plots=plots)
    report["wall_seconds"]["total"] = time.perf_counter() - start
    write_json(report, Path(out) / "study.json")
    return report


def _estimate(todo: list[dict[str, Any]], *, device: str, backend: str,
              ) -> tuple[dict[str, Any], Any]:
    """Calibrate the cost model on this machine, print the predicted time; the bar's cost function."""
    from deepres.study.estimate import calibrate, estimate, format_seconds, model_seconds

    calibration = calibrate(todo, device=device, backend=backend)
    predicted = estimate(todo, calibration)
    kinds = ", ".join(f"{kind} {format_seconds(e['seconds'])} ({e['units']} units)"
                      for kind, e in predicted["by_kind"].items())
    print(f"deepres study: {len(todo)} units to run, estimated {format_seconds(predicted['seconds'])} "
          f"on this machine ({kinds}; per-unit cost timed here against the reference CPU: "
          + ", ".join(f"{k} ×{f:.2f}" for k, f in predicted["factors"].items()) + ")",
          file=sys.stderr, flush=True)
    probes = [{"kind": kind} | {k: v for k, v in entry.items()} for kind, entry in calibration.items()]
    factors = predicted["factors"]

    def cost(unit: dict[str, Any]) -> float:
        return model_seconds(unit) * factors[unit["kind"]]

    return predicted | {"probes": probes}, cost


def _previous_estimate(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text()).get("estimate")
    except (OSError, ValueError):
        return None


def _unit_seconds(store: Any, units: list[dict[str, Any]]) -> dict[str, float]:
    """Measured wall time per kind of the units just run (their stored ``seconds``)."""
    out: dict[str, float] = {}
    for unit in units:
        if store.path(unit).is_file():  # just run and checked: no second read to validate it
            out[unit["kind"]] = out.get(unit["kind"], 0.0) + float(store.load(unit)["seconds"])
    return out


_PROG = "deepres study"


def _executor(args: argparse.Namespace) -> Executor:
    if args.executor == "local":
        return LocalExecutor()
    from deepres.study.ray_executor import RayExecutor

    return RayExecutor(args.address, max_retries=args.max_retries)


def _name_the_option(error: Exception) -> Exception:
    """A StudyConfig error with the flag of its field (its messages start with the field's name)."""
    flag = "--" + str(error).split(" ", 1)[0].replace("_", "-")
    if flag in _AXES or flag in ("--antithetic", "--dtype"):
        return ValueError(f"argument {flag}: {error}")
    return error


def check_options(args: argparse.Namespace) -> StudyConfig:
    """Check every option of ``deepres study`` without doing any work; the study's configuration.

    argparse has checked each value on its own already; this checks the rest: the
    configuration as a whole, the device (exists and works here; with ``--executor ray``
    the units run elsewhere, so only its name is checked), the backend on that device,
    and the output folder (writable).

    Raises:
        ValueError: naming the option and the value (:class:`deepres.cli_checks.OptionError`).
    """
    try:
        config = config_from_args(args)
    except (TypeError, ValueError) as error:
        raise _name_the_option(error) from None
    if args.executor == "local" and args.address is not None:
        raise OptionError("--address", args.address, "needs --executor ray")
    if args.executor == "local":
        device = check_device(args.device or "cpu")
        check_backend(args.backend, device)
    elif args.device is not None:
        check_device(args.device, here=False)
    check_out_folder(args.out)
    return config


def set_threads(threads: int | None, device: str) -> None:
    """torch's intra-op threads for a study: ``threads`` (``--threads``), or 1 on the CPU by default."""
    if threads is None and str(device).startswith("cpu"):
        # NOTE: the study's tensors are small (10 samples, D = 4): intra-op threading costs
        # more than it saves, and on a loaded machine its spin-waits explode. Measured on the
        # 2-core CPU under load 6.7: the quick limit unit took 9.3 s with 1 thread, 320 s with 2.
        # (Ray runs each task with one thread already.)
        threads = 1
    if threads is not None:
        torch.set_num_threads(threads)


def _report_corrupt(report: dict[str, Any]) -> None:
    for entry in report.get("corrupt_files", []):
        print(f"{_PROG}: unreadable result file {entry['file']}: {entry['reason']}; renamed to "
              f"{Path(entry['renamed_to']).name}, its unit was computed again", file=sys.stderr)


def main(args: argparse.Namespace) -> int:
    """Run ``deepres study`` with parsed ``args``; returns the exit status (0 on success).

    A bad option, or an output folder that another study is writing into, is reported
    on one line naming the option and its value, with exit status 2, before any work.
    """
    from deepres.study.store import CorruptResultError, CorruptResultWarning

    if phase_cli.phase_requested(args):  # the phase diagram is a study of its own
        return phase_cli.main(args)
    if shapes_cli.shapes_requested(args):  # so is the joint (L, M, D) limit
        return shapes_cli.main(args)
    try:
        config = check_options(args)
        executor = _executor(args)
    except (ImportError, ValueError) as error:
        return print_error(_PROG, error)
    if args.device is None:
        args.device = "cuda" if getattr(executor, "has_gpus", False) else "cpu"
    set_threads(args.threads, args.device)

    def study(wait: bool) -> dict[str, Any]:
        return run_study(config, args.out, device=args.device, backend=args.backend,
                         progress=not args.no_progress, plots=not args.no_plots, executor=executor, wait=wait)

    try:
        with warnings.catch_warnings():
            # Reported below, from the report, once each.
            warnings.simplefilter("ignore", CorruptResultWarning)
            result = run_locked(study, args.out, wait=args.wait, prog=_PROG)
    except OptionError as error:
        return print_error(_PROG, error)
    except KeyboardInterrupt:
        print(f"\n{_PROG}: interrupted; the finished units are stored in {args.out}/units, "
              "rerun the same command to resume", file=sys.stderr)
        return 130
    except CorruptResultError as error:
        print(f"{_PROG}: {error}", file=sys.stderr)
        return 1
    finally:
        close = getattr(executor, "close", None)
        if close is not None:
            close()
    _report_corrupt(result)
    if result["units"]["failed"]:
        for failure in result["failed_units"]:
            kind = failure["unit"]["kind"]
            print(f"{_PROG}: unit {kind} failed: {failure['error']}", file=sys.stderr)
        print(f"{_PROG}: {result['units']['failed']} unit(s) failed, listed in "
              f"{Path(args.out) / 'study.json'}; rerun the same command to retry them", file=sys.stderr)
        return 1
    print(summary(result))
    print(f"report: {Path(args.out) / 'study.json'}")
    return 0
