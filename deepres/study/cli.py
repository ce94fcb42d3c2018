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
(:class:`deepres.study.convergence.presets.StudyConfig`). Every option is checked before any
work starts; a bad one is reported on one line naming it, with exit status 2.
"""

from __future__ import annotations

import argparse

from deepres.study.convergence import cli as convergence_cli
from deepres.study.convergence.presets import PRESETS, describe_presets
from deepres.study.phase import cli as phase_cli
from deepres.study.shapes import cli as shapes_cli

__all__ = ["configure_parser", "main"]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``deepres study`` options to ``parser``: ``--preset``, the convergence study's, the phase's.

    Args:
        parser: the (sub)parser to fill; :func:`main` takes its parsed namespace.

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> configure_parser(parser)
        >>> parser.parse_args(["--preset", "phase"]).preset
        'phase'
    """
    parser.add_argument("--preset", choices=sorted([*PRESETS, "phase", "shapes"]), default="quick",
                        help="base configuration (default: quick). " + "; ".join(
                            f"{line}" for line in describe_presets().splitlines())
                        + "; phase: the phase diagram of residual multiplier and learning rate, β:γ points "
                          "at L 16..256 and δ:λ points at D 32..256 (see its --phase-* options); shapes: "
                          "the joint (L, M, D) limit against a large reference network (see its "
                          "--shapes-* options)")
    convergence_cli.add_arguments(parser)
    phase_cli.add_phase_arguments(parser)
    shapes_cli.add_shapes_arguments(parser)


def main(args: argparse.Namespace) -> int:
    """Run ``deepres study`` with parsed ``args``: the phase study if asked for, else the convergence study.

    Args:
        args: the namespace of a parser filled by :func:`configure_parser`.

    Returns:
        The exit status: 0 on success, 2 on a bad option (one line on stderr, nothing run).
    """
    if phase_cli.phase_requested(args):  # the phase diagram is a study of its own
        return phase_cli.main(args)
    if shapes_cli.shapes_requested(args):  # so is the joint (L, M, D) limit
        return shapes_cli.main(args)
    return convergence_cli.main(args)
