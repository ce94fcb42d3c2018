"""``deepres study --preset shapes``: the joint (L, M, D) limit and its P^(−1/6) rate.

Usage (about 25 minutes on a quiet 2-core CPU; the estimate is printed first)::

    deepres study --preset shapes --out shapes-out

The study trains the reference network (the largest, L = 50, M = D = 2000, K draws
per repetition) and the networks of four sweeps (error vs D at fixed (L, M), vs M
at fixed (L, D), and along a balanced and a contrast family of shapes of growing
parameter budget P = L·M·D), measures each network's error against its
repetition's reference in embedding space and in output space, fits the bound's
constants and the P-slopes with bootstrap CIs (:mod:`deepres.study.shapes.analysis`)
and writes ``study.json`` (with a ``shapes`` section), ``shapes_measurements.csv``,
``shapes_fits.csv`` and the figures. Rerunning the same command resumes from
``OUT/units/`` (one file per unit).

The flags of ``deepres study`` that make sense here keep their meaning (``--seed``,
``--replicas``, ``--etas`` (one η), ``--steps`` (one K), ``--alphas`` (one α),
``--task``, ``--samples``, ``--activation``, ``--bootstrap``, ``--ref-ratio``,
``--dtype``, ``--device``, ``--backend``, ``--threads``, ``--executor``,
``--address``, ``--max-retries``, ``--out``, ``--wait``, ``--no-plots``,
``--no-progress``); the others are refused. The ``--shapes-*`` flags set the sweeps.
"""

from __future__ import annotations

import argparse
from typing import Any

from deepres.options import print_error
from deepres.study.convergence.cli import add_arguments
from deepres.study.phase.cli import add_phase_arguments
from deepres.study.shapes.config import ShapesConfig, ShapesConfigError
from deepres.study.shapes.network import STEP_IMPLS
from deepres.study.shapes.report import summary
from deepres.study.shapes.run import run_shapes
from deepres.study.shared.command import (
    PresetOptions,
    add_flag_group,
    check_run_options,
    executor_from_args,
    option_defaults,
    run_command,
)
from deepres.study.shared.environment import set_threads

__all__ = ["add_shapes_arguments", "config_from_args", "main", "shapes_requested"]

_PROG = "deepres study"


def _ints_sep(sep: str, count: int | None) -> Any:
    def parse(text: str) -> list[int]:
        try:
            values = [int(v) for v in text.split(sep) if v.strip()]
        except ValueError:
            values = []
        if not values or (count is not None and len(values) != count):
            what = f"{count} ints separated by {sep!r}" if count else f"ints separated by {sep!r}"
            raise argparse.ArgumentTypeError(f"expected {what}; got {text!r}")
        return values

    return parse


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers; got {text!r}") from None


def _choice(text: str) -> str:
    if text not in STEP_IMPLS:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(STEP_IMPLS)}; got {text!r}")
    return text


#: --shapes-* flag → (ShapesConfig field, parser, help).
_SHAPES_FLAGS: dict[str, tuple[str, Any, str]] = {
    "--shapes-repetitions": ("repetitions", int, "draws of the coupled W_E, W_U (the data stay)"),
    "--shapes-reference": ("reference", _ints_sep(":", 3), "L:M:D of the reference network"),
    "--shapes-reference-draws": ("reference_draws", int, "(u, v) draws averaged into the reference (≥ 2)"),
    "--shapes-dim-fixed": ("dim_fixed", _ints_sep(":", 2), "L:M of the sweep in D"),
    "--shapes-dims": ("dims", _ints_sep(",", None), "D values of the sweep in D"),
    "--shapes-width-fixed": ("width_fixed", _ints_sep(":", 2), "L:D of the sweep in M"),
    "--shapes-widths": ("widths", _ints_sep(",", None), "M values of the sweep in M"),
    "--shapes-scales": ("scales", _floats, "scales s of the P families"),
    "--shapes-balanced-base": ("balanced_base", _ints_sep(":", 3),
                               "L0:M0:D0 of the balanced family L = L0·s, M = M0·s³, D = D0·s²"),
    "--shapes-contrast-dim": ("contrast_dim", int, "fixed D of the contrast family"),
    "--shapes-step": ("step", _choice,
                      "gradient step: inplace or engine (deepres.residual_stack + autograd)"),
}
_OPTIONS = PresetOptions(
    preset="shapes",
    own={flag: name for flag, (name, _, _) in _SHAPES_FLAGS.items()},
    #: ``deepres study`` option → (ShapesConfig field, takes one value).
    shared={
        "seeds": ("seed", True), "replicas": ("replicas", False), "etas": ("eta", True),
        "steps": ("steps", True), "alphas": ("alpha", True), "task": ("task", False),
        "samples": ("samples", False), "activation": ("activation", False),
        "bootstrap": ("bootstrap", False), "ref_ratio": ("ref_ratio", False), "dtype": ("dtype", False),
    },
    #: Options of ``deepres study`` that the shapes study reads outside its config.
    runtime=frozenset({"preset", "seed", "device", "backend", "out", "no_plots", "no_progress", "threads",
                       "wait", "executor", "address", "max_retries", "replace", "allow_large_units",
                       "handler", "command", "argv"}),
    say=lambda flag, detail: f"argument {flag}: {detail}",
)


def add_shapes_arguments(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` the ``--shapes-*`` flags, which set the sweeps of ``--preset shapes`` (only)."""
    add_flag_group(parser, "shapes preset",
                   "with --preset shapes: the joint (L, M, D) limit and its P^(-1/6) rate "
                   "(see docs/study.md, 'All shapes: the joint limit')",
                   _SHAPES_FLAGS, ShapesConfig(), _shown)


def _shown(name: str, kind: Any, default: Any) -> tuple[str, str | None]:
    """A default as written on the command line: shapes L:M:D joined by ':', lists of values by ','."""
    if isinstance(default, list):
        sep = ":" if name in ("reference", "dim_fixed", "width_fixed", "balanced_base") else ","
        return sep.join(f"{v:g}" for v in default), None
    return default, None


def shapes_requested(args: argparse.Namespace) -> bool:
    """Whether ``args`` asks for the shapes study (``--preset shapes`` or any ``--shapes-*`` flag)."""
    return _OPTIONS.requested(args)


def config_from_args(args: argparse.Namespace) -> ShapesConfig:
    """The :class:`ShapesConfig` the options ask for; ValueError names a bad or foreign option."""
    defaults, flags = option_defaults(add_arguments, add_phase_arguments, add_shapes_arguments)
    overrides, flag_of = _OPTIONS.overrides(args, defaults, flags)
    if "steps" in overrides:
        # K steps: the errors are recorded at the last step and, when it is ≥ 2, two thirds of the way.
        steps = overrides["steps"]
        overrides["record_steps"] = sorted({max(1, round(2 * steps / 3)), steps}) if steps else [0]
    return _OPTIONS.build(ShapesConfig, overrides, flag_of, ShapesConfigError)


def main(args: argparse.Namespace) -> int:
    """Run ``deepres study --preset shapes`` with parsed ``args``; returns the exit status.

    A bad option is reported on one line naming it, with exit status 2, before any work;
    the rest as :func:`deepres.study.shared.command.run_command` says.
    """
    try:
        config = config_from_args(args)
        check_run_options(args)
        executor = executor_from_args(args)
    except (ImportError, ValueError) as error:
        return print_error(_PROG, error)
    device = args.device or ("cuda" if getattr(executor, "has_gpus", False) else "cpu")
    set_threads(args.threads, device)

    def shapes(wait: bool) -> dict[str, Any]:
        return run_shapes(config, args.out, device=device, backend=args.backend,
                          progress=not args.no_progress, plots=not args.no_plots, executor=executor,
                          wait=wait, argv=getattr(args, "argv", None))

    return run_command(_PROG, args, shapes, summary, executor)
