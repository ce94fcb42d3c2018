"""``python -m deepres.study``: the ``deepres study`` command (see :mod:`deepres.study.cli`)."""

from __future__ import annotations

import argparse
import sys

from deepres.options import OneLineParser
from deepres.study import cli
from deepres.study.cli import configure_parser, main


def _entry() -> int:
    parser = OneLineParser(prog="python -m deepres.study", description=cli.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    configure_parser(parser)
    return main(parser.parse_args())


if __name__ == "__main__":
    sys.exit(_entry())
