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
from typing import Any

from deepres.options import (
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
from deepres.study.shared.command import (
    PresetOptions,
    add_flag_group,
    check_run_options,
    option_defaults,
    run_command,
)
from deepres.study.shared.environment import set_threads
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
_OPTIONS = PresetOptions(
    preset="phase",
    own={flag: name for flag, (name, _, _) in _PHASE_FLAGS.items()},
    #: ``deepres study`` option → (PhaseConfig field, takes one value).
    shared={
        "depths": ("depths", False), "widths": ("hidden", True), "dims": ("dim", True),
        "alphas": ("alpha", True), "etas": ("eta", True), "steps": ("steps", True), "seeds": ("seed", True),
        "replicas": ("replicas", False), "task": ("task", False), "samples": ("samples", False),
        "activation": ("activation", False), "bootstrap": ("bootstrap", False), "dtype": ("dtype", False),
    },
    #: Options of ``deepres study`` that the phase study reads outside its config.
    runtime=frozenset({"preset", "seed", "device", "backend", "out", "no_plots", "no_progress", "threads",
                       "wait", "replace", "allow_large_units", "handler", "command", "argv"}),
    say=lambda flag, detail: f"{flag} {detail}",
)


def add_phase_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``--phase-*`` options (used with ``--preset phase`` only) to ``parser``."""
    add_flag_group(parser, "phase preset", "with --preset phase: the (β, γ) phase diagram in depth and the "
                   "(δ, λ) one in D (see docs/study.md, 'Phase diagram')", _PHASE_FLAGS, PhaseConfig(),
                   _shown)


def _shown(name: str, kind: Any, default: Any) -> tuple[str, str | None]:
    """A default as written on the command line, and the metavar of its option."""
    if kind is _pairs:
        return ",".join(f"{a:g}:{b:g}" for a, b in default), "X:Y,..."
    if kind is _ints:
        return ",".join(map(str, default)), "D,..."
    return default, None


def phase_requested(args: argparse.Namespace) -> bool:
    """Whether ``args`` asks for the phase study (``--preset phase`` or any ``--phase-*`` flag)."""
    return _OPTIONS.requested(args)


def config_from_args(args: argparse.Namespace) -> PhaseConfig:
    """The :class:`PhaseConfig` the options ask for; ValueError names a bad or foreign option."""
    # The convergence study's options are refused unless the phase study reads them.
    overrides, flag_of = _OPTIONS.overrides(args, *option_defaults(add_arguments))
    return _OPTIONS.build(PhaseConfig, overrides, flag_of, PhaseConfigError)


def main(args: argparse.Namespace) -> int:
    """Run ``deepres study --preset phase`` with parsed ``args``; returns the exit status."""
    try:
        config = config_from_args(args)
    except ValueError as error:
        print(f"deepres study: {error}", file=sys.stderr)
        return 2
    device = args.device or "cpu"
    try:
        check_run_options(args)
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

    return run_command("deepres study", args, phase, summary)
