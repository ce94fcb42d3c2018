"""Compile time and step time of a deep network under ``torch.compile``.

Measures, for ``DeepResNet(5, 5, depth=L, dim=16, hidden=64)`` at each L:

* the wall time of the first training step of
  ``torch.compile(net, fullgraph=True)`` (tracing, compiling the forward and
  backward graphs, and running the step), in a fresh process with empty
  inductor caches, so the number is a cold compile;
* the time of later training steps compiled and uncompiled, timed in
  alternating rounds in the same process (so that load on the machine hits
  both alike), and their ratio.

Each depth is measured in ``--repeats`` fresh processes (default 3): on a
shared machine one cold compile can be a second or two off, so the summary
gives the median first step and the ratio of the median step times over all
processes; every process's own figures are kept under ``runs``.

A training step is forward, loss ½·mean ‖f − y‖², backward. Writes one JSON with
the environment (device, versions, commit, load)::

    python bench/compile_time.py                                   # L = 64, 1024, 4096
    python bench/compile_time.py --depths 4096 --backend inductor --out /tmp/c.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
BACKENDS = ("inductor", "aot_eager", "eager")


def _one_depth(depth: int, backend: str, rounds: int, seed: int) -> dict:
    """Run in a fresh process: first compiled step, then alternating timed steps."""
    import torch

    import deepres

    torch.manual_seed(seed)
    net = deepres.DeepResNet(5, 5, depth=depth, dim=16, hidden=64,
                             generator=torch.Generator().manual_seed(seed))
    x, y = torch.randn(10, 5), torch.randn(10, 5)

    def step(model):
        net.zero_grad(set_to_none=True)
        loss = 0.5 * (model(x) - y).pow(2).sum(-1).mean()
        loss.backward()
        return loss.detach()

    compiled = torch.compile(net, fullgraph=True, backend=backend)
    start = time.perf_counter()
    first_loss = step(compiled)
    first = time.perf_counter() - start
    plain_loss = step(net)
    times = {"compiled": [], "uncompiled": []}
    for _ in range(rounds):
        for name, model in (("compiled", compiled), ("uncompiled", net)):
            start = time.perf_counter()
            step(model)
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(values) for name, values in times.items()}
    return {
        "depth": depth, "backend": backend, "first_step_s": first,
        "compile_s": first - median["compiled"],
        "step_ms": {name: 1e3 * value for name, value in median.items()},
        "step_ms_all": {name: [1e3 * v for v in values] for name, values in times.items()},
        "compiled_over_uncompiled": median["compiled"] / median["uncompiled"],
        "loss_difference": abs(float(first_loss) - float(plain_loss)),
    }


def _summarize(depth: int, backend: str, runs: list[dict]) -> dict:
    """One depth's figures over its processes: medians, and every process's own row under ``runs``."""
    first = [run["first_step_s"] for run in runs]
    steps = {name: statistics.median(1e-3 * t for run in runs for t in run["step_ms_all"][name])
             for name in ("compiled", "uncompiled")}
    return {
        "depth": depth, "backend": backend, "processes": len(runs),
        "first_step_s": statistics.median(first), "first_step_s_all": first,
        "compile_s": statistics.median(run["compile_s"] for run in runs),
        "step_ms": {name: 1e3 * value for name, value in steps.items()},
        "compiled_over_uncompiled": steps["compiled"] / steps["uncompiled"],
        "loss_difference": max(run["loss_difference"] for run in runs),
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="Each depth runs in its own process with empty compile caches.")
    parser.add_argument("--depths", default="64,1024,4096", help="comma-separated L (default %(default)s)")
    parser.add_argument("--backend", default="inductor", choices=BACKENDS,
                        help="torch.compile backend (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=7,
                        help="timed steps of each kind (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="fresh processes per depth, each with a cold compile (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and data (default 0)")
    parser.add_argument("--out", type=Path, default=RESULTS / "compile_time_cpu.json",
                        help="JSON report (default %(default)s)")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        depths = [int(part) for part in args.depths.split(",")]
    except ValueError:
        parser.error(f"--depths must be comma-separated positive ints; got {args.depths!r}")
    if not depths or min(depths) < 1:
        parser.error(f"--depths must be comma-separated positive ints; got {args.depths!r}")
    if args.rounds < 1:
        parser.error(f"--rounds must be a positive int; got {args.rounds}")
    if args.repeats < 1:
        parser.error(f"--repeats must be a positive int; got {args.repeats}")
    if args.worker is not None:
        print(json.dumps(_one_depth(args.worker, args.backend, args.rounds, args.seed)))
        return 0

    from deepres.benchmark.environment import environment

    report = {"environment": environment(sys.argv if argv is None else ["bench/compile_time.py", *argv]),
              "model": "DeepResNet(5, 5, depth=L, dim=16, hidden=64), batch 10, float32, fullgraph=True",
              "results": []}
    for depth in depths:
        runs = []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as cache:
                env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "TRITON_CACHE_DIR": cache}
                command = [sys.executable, __file__, "--worker", str(depth), "--backend", args.backend,
                           "--rounds", str(args.rounds), "--seed", str(args.seed)]
                done = subprocess.run(command, capture_output=True, text=True, env=env)
            if done.returncode != 0:
                print(done.stderr[-3000:], file=sys.stderr)
                return 1
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        row = _summarize(depth, args.backend, runs)
        report["results"].append(row)
        steps = row["step_ms"]
        print(f"L={depth:5d} {args.backend}: first step {row['first_step_s']:.2f} s (median of "
              f"{len(runs)}: {', '.join(f'{r:.2f}' for r in row['first_step_s_all'])}), step "
              f"{steps['compiled']:.1f} ms compiled / {steps['uncompiled']:.1f} ms uncompiled "
              f"({row['compiled_over_uncompiled']:.3f}x)", flush=True)
    report["environment"]["load_average_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"report: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
