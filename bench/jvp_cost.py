"""Cost of the fused jvp of each CPU engine relative to its forward pass (float32, one thread).

    python bench/jvp_cost.py                       # shapes A and C, wall clock
    python bench/jvp_cost.py --repeats 9 --clock thread   # CPU time of this thread (shared machines)

Shapes: A = (R 1, L 4096, B 64, D 16, M 64), C = (R 16, L 256, B 32, D 8, M 4). For each engine
(``torch``: ``deepres::torch_stack`` and ``deepres::torch_stack_jvp``; ``cpp``:
``deepres::cpp_stack`` and ``deepres::cpp_stack_jvp``, where the C++ engine builds), rows: the
forward op (no checkpoints), the jvp op with tangents in h, u and v, with tangents in u and v
only (torch), and ``torch.func.jvp`` of ``deepres.residual_stack`` with that backend (forward +
jvp op, what a user calls). Median of ``--repeats`` runs after one warm-up, and the ratio to the
engine's forward.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

import deepres
from deepres.engines.cpp_build import cpp_unavailable_reason
from deepres.engines.torch_engine import torch_stack
from deepres.engines.torch_jvp import torch_stack_jvp

SHAPES = {"A": (1, 4096, 64, 16, 64), "C": (16, 256, 32, 8, 4)}


def _median_seconds(fn: Callable[[], object], repeats: int, clock: Callable[[], float]) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return statistics.median(times)


def _rows(backend: str, replicas: int, depth: int, batch: int, dim: int,
          hidden: int) -> dict[str, Callable[[], object]]:
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(replicas, batch, dim, generator=gen)
    u = torch.randn(replicas, depth, hidden, dim, generator=gen) * dim**0.5
    v = torch.randn(replicas, depth, hidden, dim, generator=gen) * dim**0.5
    hd, ud, vd = torch.randn_like(h), torch.randn_like(u), torch.randn_like(v)
    c, a = 1.0 / (depth * hidden), 1.0 / dim

    def stack(hh: torch.Tensor, uu: torch.Tensor, vv: torch.Tensor) -> torch.Tensor:
        return deepres.residual_stack(hh, uu, vv, multiplier=c, pre_scale=a, backend=backend)

    if backend == "cpp":
        from deepres.engines.cpp_engine import cpp_stack, cpp_stack_jvp

        return {
            "forward op": lambda: cpp_stack(h, u, v, c, a, "tanh", 1, False),
            "jvp op, tangents h, u, v": lambda: cpp_stack_jvp(h, u, v, hd, ud, vd, c, a, "tanh"),
            "torch.func.jvp(residual_stack)": lambda: torch.func.jvp(stack, (h, u, v), (hd, ud, vd)),
        }
    return {
        "forward op": lambda: torch_stack(h, u, v, c, a, "tanh", 1, False),
        "jvp op, tangents h, u, v": lambda: torch_stack_jvp(h, u, v, hd, ud, vd, c, a, "tanh"),
        "jvp op, tangents u, v": lambda: torch_stack_jvp(h, u, v, None, ud, vd, c, a, "tanh"),
        "torch.func.jvp(residual_stack)": lambda: torch.func.jvp(stack, (h, u, v), (hd, ud, vd)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per row (default 5)")
    parser.add_argument("--clock", choices=["wall", "thread"], default="wall",
                        help="wall clock, or this thread's CPU time (robust to other load) (default wall)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    clock = time.perf_counter if args.clock == "wall" else time.thread_time
    backends = ["torch"] + (["cpp"] if cpp_unavailable_reason() is None else [])
    for name, shape in SHAPES.items():
        replicas, depth, batch, dim, hidden = shape
        print(f"shape {name}: R={replicas} L={depth} B={batch} D={dim} M={hidden}, float32, 1 thread, "
              f"{args.clock} clock")
        for backend in backends:
            base = None
            with torch.no_grad():
                for label, fn in _rows(backend, *shape).items():
                    seconds = _median_seconds(fn, args.repeats, clock)
                    base = base or seconds
                    print(f"  {backend:5s} {label:34s} {seconds * 1e3:9.1f} ms   {seconds / base:5.2f}x")


if __name__ == "__main__":
    main()
