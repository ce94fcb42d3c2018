"""``python -m deepres.benchmark``: the same as ``deepres bench``."""

from __future__ import annotations

import argparse
import sys

from deepres.benchmark.cli import configure_parser, main


def _run() -> int:
    parser = argparse.ArgumentParser(prog="python -m deepres.benchmark")
    configure_parser(parser)
    return main(parser.parse_args())


if __name__ == "__main__":
    sys.exit(_run())
