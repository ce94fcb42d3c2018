"""``deepres study --preset phase``: the phase diagram of residual multiplier and learning rate.

Usage (about 5 minutes on a 2-core CPU)::

    deepres study --preset phase --out phase-out

It measures, at every point (β, γ) of a grid and every depth L, what one gradient
step and K steps do (:mod:`deepres.study.phase.measure`), fits the exponents in L with
bootstrap CIs, classifies each point (:mod:`deepres.study.phase.analysis`), does
the same in D at fixed L, M for the (δ, λ) family, and writes ``study.json``
(with a ``phase`` section), ``phase_points.csv``, ``phase_measurements.csv`` and
the figures. Rerunning the same command resumes from ``OUT/units/``.

The flags of ``deepres study`` that make sense here keep their meaning
(``--depths``, ``--widths`` (one M), ``--dims`` (one D), ``--alphas`` (one α),
``--etas`` (one η for the K steps), ``--steps`` (one K), ``--seed``, ``--replicas``,
``--task``, ``--samples``, ``--activation``, ``--bootstrap``, ``--dtype``,
``--device``, ``--backend``, ``--threads``, ``--out``, ``--wait``, ``--replace``,
``--allow-large-units``, ``--no-plots``, ``--no-progress``); the others are refused.
The ``--phase-*`` flags set the grid.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from deepres.options import (
    OptionError,
    check_backend,
    check_device,
    check_out_folder,
    finite_float,
    int_at_least,
    ints_at_least,
    print_error,
    unique_values,
)
from deepres.study.convergence.cli import add_arguments
from deepres.study.phase.config import MAX_EXPONENT, PhaseConfig, PhaseConfigError
from deepres.study.phase.measure import phase_unit_bytes
from deepres.study.phase.report import TABLES, summary
from deepres.study.phase.run import run_phase
from deepres.study.shared.environment import set_threads
from deepres.study.shared.files import run_locked
from deepres.study.shared.memory import check_unit_memory
from deepres.study.shared.outputs import check_outputs
from deepres.study.shared.store import unit_identity

__all__ = ["add_phase_arguments", "config_from_args", "main", "phase_requested"]


# ---------------------------------------------------------------- command line

def _pairs(text: str) -> list[list[float]]:
    try:
        items = [item.split(":") for item in text.split(",") if item.strip()]
        pairs = [[float(a), float(b)] for a, b in items]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated pairs x:y, e.g. 1:1,0.5:0; got {text!r}"
                                         ) from None
    if any(not (math.isfinite(v) and abs(v) <= MAX_EXPONENT) for pair in pairs for v in pair):
        raise argparse.ArgumentTypeError(f"every coordinate must be a number in [-{MAX_EXPONENT:g}, "
                                         f"{MAX_EXPONENT:g}] (an exponent of L or D); got {text!r}")
    unique_values([tuple(pair) for pair in pairs], text)
    return pairs


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints; got {text!r}") from None
    if values:
        values = ints_at_least(1)(text)
    return values


#: --phase-* flag → (PhaseConfig field, parser, help).
_PHASE_FLAGS: dict[str, tuple[str, Any, str]] = {
    "--phase-points": ("points", _pairs, "points β:γ of the depth diagram, e.g. 1:1,0.5:0 (empty: skip it)"),
    "--phase-first-eta": ("first_eta", finite_float,
                          "first η tried for the first step, halved until the step is linear in η"),
    "--phase-tolerance": ("tolerance", finite_float,
                          "τ of the classification rule: an exponent's sign counts only if its CI clears ±τ"),
    "--phase-dims": ("dims", _ints, "D values of the dimension diagram (empty: skip it)"),
    "--phase-dim-points": ("dim_points", _pairs, "points δ:λ of the dimension diagram"),
    "--phase-dim-depth": ("dim_depth", int_at_least(1), "fixed L of the dimension diagram"),
    "--phase-dim-hidden": ("dim_hidden", int_at_least(1), "fixed M of the dimension diagram"),
    "--phase-dim-replicas": ("dim_replicas", int_at_least(2), "replicas of the dimension diagram"),
}
#: ``deepres study`` flag → (PhaseConfig field, takes one value).
_SHARED: dict[str, tuple[str, bool]] = {
    "depths": ("depths", False), "widths": ("hidden", True), "dims": ("dim", True), "alphas": ("alpha", True),
    "etas": ("eta", True), "steps": ("steps", True), "seeds": ("seed", True), "replicas": ("replicas", False),
    "task": ("task", False), "samples": ("samples", False), "activation": ("activation", False),
    "bootstrap": ("bootstrap", False), "dtype": ("dtype", False),
}
#: Options of ``deepres study`` that the phase study reads outside its config.
_RUNTIME = {"preset", "seed", "device", "backend", "out", "no_plots", "no_progress", "threads", "wait",
            "replace", "allow_large_units", "handler", "command", "argv"}


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def add_phase_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``--phase-*`` options (used with ``--preset phase`` only) to ``parser``."""
    group = parser.add_argument_group(
        "phase preset", "with --preset phase: the (β, γ) phase diagram in depth and the (δ, λ) one in D "
                        "(see docs/study.md, 'Phase diagram')")
    defaults = PhaseConfig()
    for flag, (name, kind, text) in _PHASE_FLAGS.items():
        default = getattr(defaults, name)
        metavar = None
        if kind is _pairs:
            default, metavar = ",".join(f"{a:g}:{b:g}" for a, b in default), "X:Y,..."
        elif kind is _ints:
            default, metavar = ",".join(map(str, default)), "D,..."
        group.add_argument(flag, type=kind, default=None, metavar=metavar,
                           help=f"{text} (default: {default})")


def phase_requested(args: argparse.Namespace) -> bool:
    """Whether ``args`` asks for the phase study (``--preset phase`` or any ``--phase-*`` flag)."""
    return args.preset == "phase" or any(getattr(args, _dest(f), None) is not None for f in _PHASE_FLAGS)


def _option_defaults() -> tuple[dict[str, Any], dict[str, str]]:
    """Defaults and flag names of the other ``deepres study`` options, read from their parser."""
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    flags = {a.dest: a.option_strings[0] for a in parser._actions if a.option_strings}
    return {a.dest: a.default for a in parser._actions}, flags


def config_from_args(args: argparse.Namespace) -> PhaseConfig:
    """The :class:`PhaseConfig` the options ask for; ValueError names a bad or foreign option."""
    if args.preset != "phase":
        given = next(f for f in _PHASE_FLAGS if getattr(args, _dest(f), None) is not None)
        raise ValueError(f"{given} needs --preset phase; got --preset {args.preset}")
    defaults, flags = _option_defaults()
    own = {_dest(f) for f in _PHASE_FLAGS}
    for dest, value in vars(args).items():
        if dest in _SHARED or dest in _RUNTIME or dest in own or dest not in defaults:
            continue
        if value != defaults[dest]:
            raise ValueError(f"{flags.get(dest, dest)} is not used by --preset phase; got {value!r}")
    overrides: dict[str, Any] = {}
    flag_of = {name: flag for flag, (name, _, _) in _PHASE_FLAGS.items()}
    for dest, (name, single) in _SHARED.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        flag_of[name] = flags.get(dest, dest)
        if single:
            if not isinstance(value, list) or len(value) != 1:
                raise ValueError(f"{flag_of[name]} takes one value with --preset phase; got {value!r}")
            value = value[0]
        overrides[name] = value
    if getattr(args, "seed", None) is not None:
        overrides["seed"] = args.seed
        flag_of["seed"] = "--seed"
    for flag, (name, _, _) in _PHASE_FLAGS.items():
        value = getattr(args, _dest(flag), None)
        if value is not None:
            overrides[name] = value
    try:
        return PhaseConfig(**overrides)
    except PhaseConfigError as error:
        raise ValueError(f"{flag_of.get(error.field, error.field)} {error.detail}") from None




def main(args: argparse.Namespace) -> int:
    """Run ``deepres study --preset phase`` with parsed ``args``; returns the exit status."""
    try:
        config = config_from_args(args)
    except ValueError as error:
        print(f"deepres study: {error}", file=sys.stderr)
        return 2
    device = args.device or "cpu"
    try:
        check_backend(args.backend, check_device(device))
        check_out_folder(args.out)
        check_outputs(args.out, TABLES, config.as_dict(), unit_identity(device, args.backend),
                      replace=args.replace)
        if not args.allow_large_units:
            check_unit_memory(config.units(), phase_unit_bytes, device)
    except ValueError as error:
        return print_error("deepres study", error)
    set_threads(args.threads, device)

    def phase(wait: bool) -> dict[str, Any]:
        return run_phase(config, args.out, device=device, backend=args.backend,
                         progress=not args.no_progress, plots=not args.no_plots, wait=wait,
                         argv=getattr(args, "argv", None))

    try:
        report = run_locked(phase, args.out, wait=args.wait, prog="deepres study")
    except OptionError as error:
        return print_error("deepres study", error)
    except KeyboardInterrupt:
        print(f"\ndeepres study: interrupted; the finished units are stored in {args.out}/units, "
              "rerun the same command to resume", file=sys.stderr)
        return 130
    print(summary(report))
    print(f"report: {Path(args.out) / 'study.json'}")
    return 0
