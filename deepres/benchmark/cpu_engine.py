"""The CPU engines side by side: ``python -m deepres.benchmark.cpu_engine`` (``--help`` for options).

Times one training step (forward + backward of h_L·w, float32, tanh, ``checkpoint_every=None``)
of the C++ engine (``backend="cpp"``), the PyTorch engine (``backend="torch"``) and the plain
per-layer autograd loop (:func:`deepres.engines.reference.reference_residual_stack`, batched over
replicas), interleaved (one step of each in turn, repeated), on 1 and 2 threads, at the shapes of
issue-sized workloads:

* A = (R 1, L 4096, B 64, D 16, M 64), B = (R 1, L 1024, B 256, D 32, M 32),
  C = (R 16, L 256, B 32, D 8, M 4);
* the studies' ResNet units: R 512, B 10, D 4, (L, M) ∈ {(128, 16), (128, 4), (16, 1)}.

The single-thread float32 GEMM peak (a 1024² product) is timed in the same interleaved loop, and
each engine's rate is given as a percentage of it, counting 16·R·L·B·M·D FLOPs per step (forward
4·B·M·D per layer and replica, backward with its recompute 3× that). Medians are reported, with the
machine's load average: other processes sharing the CPU make the figures noisy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from deepres.benchmark.environment import environment, load_average
from deepres.engines.reference import reference_residual_stack
from deepres.functional import residual_stack

__all__ = ["SHAPES", "main", "run"]

#: name → (R, L, B, D, M).
SHAPES: dict[str, tuple[int, int, int, int, int]] = {
    "A": (1, 4096, 64, 16, 64), "B": (1, 1024, 256, 32, 32), "C": (16, 256, 32, 8, 4),
    "study-L128-M16": (512, 128, 10, 4, 16), "study-L128-M4": (512, 128, 10, 4, 4),
    "study-L16-M1": (512, 16, 10, 4, 1),
}
ENGINES = ("cpp", "torch", "eager")


def _step(engine: str, shape: tuple[int, int, int, int, int]) -> Callable[[], None]:
    replicas, depth, batch, dim, hidden = shape
    generator = torch.Generator().manual_seed(0)
    h0 = torch.randn(replicas, batch, dim, generator=generator)
    u = (torch.randn(replicas, depth, hidden, dim, generator=generator) * dim**0.5).requires_grad_()
    v = (torch.randn(replicas, depth, hidden, dim, generator=generator) * dim**0.5).requires_grad_()
    weight = torch.randn(replicas, batch, dim, generator=generator)
    c, a = 2.0 / (depth * hidden), 1.0 / dim

    def step() -> None:
        u.grad = v.grad = None
        if engine == "eager":
            out = reference_residual_stack(h0, u, v, c, a, "tanh")
        else:
            out = residual_stack(h0, u, v, multiplier=c, pre_scale=a, backend=engine)
        (out * weight).sum().backward()

    return step


def _gemm() -> Callable[[], None]:
    left, right = torch.randn(1024, 1024), torch.randn(1024, 1024)
    return lambda: torch.mm(left, right)


#: ``--clock``: wall time, or the CPU time of the calling thread (one thread only: on a machine other
#: processes share, it leaves out the time the process waits for a core).
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "thread": time.thread_time}


def run(shapes: Sequence[str], threads: Sequence[int], repeats: int,
        clock: str = "wall") -> dict[str, object]:
    """Measure; returns the JSON-able result (see the module docstring).

    Args:
        shapes: names of :data:`SHAPES`. threads: thread counts. repeats: interleaved rounds.
        clock: a name of :data:`CLOCKS`; ``"thread"`` only with ``threads == [1]``.
    """
    if clock == "thread" and list(threads) != [1]:
        raise ValueError(f"clock='thread' measures one thread only; got threads {list(threads)}")
    now = CLOCKS[clock]

    def _time(call: Callable[[], None]) -> float:
        start = now()
        call()
        return now() - start

    before = torch.get_num_threads()
    results: list[dict[str, object]] = []
    gemm_seconds: list[float] = []
    gemm = _gemm()
    try:
        for count in threads:
            torch.set_num_threads(count)
            for name in shapes:
                shape = SHAPES[name]
                steps = {engine: _step(engine, shape) for engine in ENGINES}
                for call in steps.values():  # warm-up (and the C++ build, if any)
                    call()
                seconds: dict[str, list[float]] = {engine: [] for engine in ENGINES}
                for _ in range(repeats):
                    for engine, call in steps.items():
                        seconds[engine].append(_time(call))
                    torch.set_num_threads(1)
                    gemm_seconds.append(_time(gemm))
                    torch.set_num_threads(count)
                replicas, depth, batch, dim, hidden = shape
                median = {engine: statistics.median(values) for engine, values in seconds.items()}
                results.append({
                    "shape": name, "R": replicas, "L": depth, "B": batch, "D": dim, "M": hidden,
                    "threads": count,
                    "flops_per_step": 16 * replicas * depth * batch * hidden * dim,
                    "seconds": seconds, "median_s": median,
                    "cpp_vs_torch": median["torch"] / median["cpp"],
                    "cpp_vs_eager": median["eager"] / median["cpp"],
                    "load_average": load_average(),
                })
    finally:
        torch.set_num_threads(before)
    peak = 2 * 1024**3 / statistics.median(gemm_seconds)
    for row in results:
        row["percent_of_gemm_peak"] = {engine: 100 * row["flops_per_step"] / seconds / peak
                                       for engine, seconds in row["median_s"].items()}
    by_shape = {(row["shape"], row["threads"]): row["median_s"]["cpp"] for row in results}
    for row in results:
        if row["threads"] != 1 and (row["shape"], 1) in by_shape:
            row["cpp_speedup_vs_1_thread"] = by_shape[(row["shape"], 1)] / row["median_s"]["cpp"]
    return {"clock": clock, "gemm_peak_gflops_1_thread": peak / 1e9,
            "flop_count": "16·R·L·B·M·D per step (forward 4·B·M·D per layer and replica, backward with "
                          "recompute 3× that)",
            "results": results}


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: measure and write the JSON (``--out``), printing one line per shape and thread count."""
    parser = argparse.ArgumentParser(prog="python -m deepres.benchmark.cpu_engine",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated names (default: all)")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts (default: 1,2)")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds (default: 7)")
    parser.add_argument("--clock", choices=list(CLOCKS), default="wall",
                        help="wall (default), or thread: the CPU time of the calling thread, with "
                             "--threads 1, for a machine other processes share")
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write")
    args = parser.parse_args(argv)
    shapes = [s for s in args.shapes.split(",") if s]
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        parser.error(f"--shapes: unknown {unknown}; choose from {list(SHAPES)}")
    threads = [int(t) for t in args.threads.split(",") if t]
    if args.clock == "thread" and threads != [1]:
        parser.error("--clock thread measures one thread: use it with --threads 1")
    given = sys.argv[1:] if argv is None else list(argv)
    command = [sys.executable, "-m", "deepres.benchmark.cpu_engine", *given]
    result = {"environment": environment(command),
              **run(shapes, threads, args.repeats, args.clock)}
    for row in result["results"]:
        percent = row["percent_of_gemm_peak"]
        print(f"{row['shape']:>15} {row['threads']} thr: cpp {row['median_s']['cpp'] * 1e3:8.1f} ms "
              f"({percent['cpp']:.0f}% of peak), {row['cpp_vs_torch']:.2f}x torch engine "
              f"({percent['torch']:.0f}%), {row['cpp_vs_eager']:.2f}x eager"
              + (f", {row['cpp_speedup_vs_1_thread']:.2f}x its 1-thread time"
                 if "cpp_speedup_vs_1_thread" in row else ""))
    print(f"single-thread GEMM peak: {result['gemm_peak_gflops_1_thread']:.1f} GFLOP/s")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
