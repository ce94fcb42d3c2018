"""Time and peak memory of one training step of the PyTorch engine against the plain
autograd reference, on this machine.

Runs the ``engine-vs-reference`` preset of ``deepres bench`` (L = 2048, B = 256,
D = 32, M = 128, float32: reference, engine with ``checkpoint_every=None`` and
``"sqrt"``, and the eager module) and the ``engine-vs-reference-overhead`` preset
(the same at B = 64, D = M = 16, where per-layer overhead dominates), and writes
both reports as JSON under ``bench/results/``. Extra arguments are passed on to
``deepres bench``:

    python bench/engine_memory_time.py                # both shapes
    python bench/engine_memory_time.py --dtype float64
    python bench/engine_memory_time.py --out-dir /tmp --threads 1

What the engine is for: activation memory (``saved`` column) at most 1/4 of the
reference's with ``None`` and at most 1/20 with ``"sqrt"``; time within 1.2× of
the reference, and faster where overhead dominates.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deepres.benchmark.cli import configure_parser, main

RESULTS = Path(__file__).resolve().parent / "results"


def run(extra: list[str], out_dir: Path) -> int:
    """Run both presets with ``extra`` options; write ``engine_vs_reference[_overhead]_<device>.json``
    to ``out_dir``."""
    status = 0
    for preset in ("engine-vs-reference", "engine-vs-reference-overhead"):
        parser = argparse.ArgumentParser(prog="deepres bench")
        configure_parser(parser)
        args = parser.parse_args(["--preset", preset, *extra])
        device = args.device or "cpu"
        args.json = args.json or str(out_dir / f"{preset.replace('-', '_')}_{device}.json")
        print(f"== {preset} ==", flush=True)
        status = max(status, main(args))
    return status


if __name__ == "__main__":
    wrapper = argparse.ArgumentParser(description=__doc__,
                                      formatter_class=argparse.RawDescriptionHelpFormatter)
    wrapper.add_argument("--out-dir", type=Path, default=RESULTS, help="where to write the JSON reports")
    known, rest = wrapper.parse_known_args()
    sys.exit(run(rest, known.out_dir))
