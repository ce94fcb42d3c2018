"""The convergence study's options of ``deepres study``, their checks, and its ``main``.

The command itself, which also runs the phase preset, is :mod:`deepres.study.cli`;
the run is :func:`deepres.study.convergence.run.run_study`. Every flag overrides one
field of the preset (:class:`deepres.study.convergence.presets.StudyConfig`).
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from deepres.activations import ACTIVATIONS
from deepres.functional import BACKENDS
from deepres.options import (
    MAX_INT,
    float_in,
    int_at_least,
    ints_at_least,
    one_of,
    positive_floats,
    print_error,
    threads_option,
)
from deepres.study.convergence.compare import SOLVERS
from deepres.study.convergence.estimate import unit_bytes
from deepres.study.convergence.presets import StudyConfig, StudyConfigError, preset
from deepres.study.convergence.report import TABLES, summary
from deepres.study.convergence.run import run_study
from deepres.study.shared.command import check_run_options, executor_from_args, run_command
from deepres.study.shared.data import TASK_ALIASES, TASKS
from deepres.study.shared.environment import set_threads
from deepres.study.shared.memory import check_unit_memory
from deepres.study.shared.outputs import check_outputs
from deepres.study.shared.store import unit_identity

__all__ = ["add_arguments", "check_options", "config_from_args", "main"]


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
    "--solver": ("solver", one_of(SOLVERS), "solver of the limit (MeanODENet): euler, midpoint or rk4"),
    "--particle-init": ("particle_init", one_of(("sobol", "antithetic")),
                        "the limit's particles: sobol or antithetic"),
    "--task": ("task", one_of((*TASKS, *TASK_ALIASES)),
               "task: memorize (the companion paper's Gaussian targets; formerly called paper) or teacher"),
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of the convergence study, all but ``--preset``, to ``parser``.

    Args:
        parser: the parser of ``deepres study`` (:func:`deepres.study.cli.configure_parser`).

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> add_arguments(parser)
        >>> parser.parse_args(["--depths", "4,8"]).depths
        [4, 8]
    """
    parser.add_argument("--seed", type=int_at_least(-MAX_INT), default=None,
                        help="a single seed (same as --seeds N)")
    quick = preset("quick")
    for flag, (name, kind, text) in _AXES.items():
        value = {"solver": quick.resolved_solver, "particle_init": quick.resolved_particle_init}.get(
            name, getattr(quick, name))
        shown = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) if isinstance(
            value, list) else (f"{value:g}" if isinstance(value, float) else str(value))
        parser.add_argument(flag, type=kind, default=None,
                            help=f"{text} (default: the preset's; quick: {shown or 'none'})")
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
    parser.add_argument("--replace", action="store_true",
                        help="overwrite study.json and the CSV tables in --out even when they were not "
                             "written by a deepres study of this configuration (default: refuse, before any "
                             "work)")
    parser.add_argument("--allow-large-units", action="store_true",
                        help="run units whose memory estimate exceeds the device's memory (default: refuse "
                             "them before any work, naming the largest; the estimate is an upper bound)")
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
    parser.add_argument("--threads", type=threads_option(), default=None,
                        help="torch CPU threads (default: 1 on CPU, where the study's small tensors run "
                             "faster on one thread than on several; torch's default elsewhere)")


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


_PROG = "deepres study"


def _name_the_option(error: Exception) -> Exception:
    """A StudyConfig error said on the flag that sets its field, when a flag sets it."""
    if not isinstance(error, StudyConfigError):
        return error
    flag = "--" + error.field.replace("_", "-")
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
        ValueError: naming the option and the value (:class:`deepres.options.OptionError`).
    """
    try:
        config = config_from_args(args)
    except (TypeError, ValueError) as error:
        raise _name_the_option(error) from None
    check_run_options(args)
    return config


def main(args: argparse.Namespace) -> int:
    """Run the convergence study with parsed ``args``; returns the exit status (0 on success).

    A bad option, or an output folder that another study is writing into, is reported
    on one line naming the option and its value, with exit status 2, before any work.
    """
    try:
        config = check_options(args)
        executor = executor_from_args(args)
    except (ImportError, ValueError) as error:
        return print_error(_PROG, error)
    if args.device is None:
        args.device = "cuda" if getattr(executor, "has_gpus", False) else "cpu"
    try:
        check_outputs(args.out, TABLES, config.as_dict(), unit_identity(args.device, args.backend),
                      replace=args.replace)
        if not args.allow_large_units and args.executor == "local":  # Ray's workers are other machines
            check_unit_memory(config.units(), unit_bytes, args.device)
    except ValueError as error:
        close = getattr(executor, "close", None)
        if close is not None:
            close()
        return print_error(_PROG, error)
    set_threads(args.threads, args.device)

    def study(wait: bool) -> dict[str, Any]:
        return run_study(config, args.out, device=args.device, backend=args.backend,
                         progress=not args.no_progress, plots=not args.no_plots, executor=executor, wait=wait,
                         preset=args.preset, argv=getattr(args, "argv", None))

    return run_command(_PROG, args, study, summary, executor)
