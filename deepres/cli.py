"""The ``deepres`` command: ``deepres study``, ``deepres bench`` and ``deepres demo``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from deepres.options import OneLineParser, check_device, int_at_least, print_error

__all__ = ["build_parser", "main"]

_DESCRIPTION = """\
deepres: very deep residual networks and their infinite-depth limit (the Neural Mean ODE).

  deepres study   train ResNets and their mean-ODE limit side by side and fit the convergence
                  rates in depth L, width M, dimension D and scale alpha (JSON, CSV, plots)
  deepres bench   time and memory of every backend against eager PyTorch, checkpointing,
                  torch.compile and torchdiffeq
  deepres demo    one training step of a 2048-layer network with each engine (a quick look)

Run `deepres COMMAND --help` for the options of each command. A bad option is
reported on one line naming it and its value, with exit status 2, before any work.
"""


def _demo_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--depth", type=int_at_least(1), default=2048,
                        help="number of residual blocks L (default 2048)")
    parser.add_argument("--dim", type=int_at_least(1), default=16, help="embedding dimension D (default 16)")
    parser.add_argument("--hidden", type=int_at_least(1), default=16, help="units per block M (default 16)")
    parser.add_argument("--batch", type=int_at_least(1), default=64, help="batch size B (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights and data (default 0)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                        help="precision (default float32)")


def _run_demo(args: argparse.Namespace) -> int:
    import torch

    from deepres.demo import run_demo

    try:
        check_device(args.device)
    except ValueError as error:
        return print_error("deepres demo", error)
    run_demo(args.depth, args.dim, args.hidden, args.batch, args.seed, args.device,
             getattr(torch, args.dtype))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``deepres`` command."""
    from deepres.benchmark import cli as bench_cli
    from deepres.study import cli as study_cli

    parser = OneLineParser(prog="deepres", description=_DESCRIPTION,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text, configure, run in (
        ("study", "convergence study: ResNets vs their mean-ODE limit",
         study_cli.configure_parser, study_cli.main),
        ("bench", "benchmark every backend against common baselines",
         bench_cli.configure_parser, bench_cli.main),
        ("demo", "one training step of a deep network with each engine", _demo_parser, _run_demo),
    ):
        sub = commands.add_parser(name, help=help_text, description=help_text,
                                  formatter_class=argparse.HelpFormatter)
        configure(sub)
        sub.set_defaults(handler=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``deepres`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # The full command line, for the provenance of what the command writes.
    args.argv = [sys.executable, *sys.argv] if argv is None else ["deepres", *argv]
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 2
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
