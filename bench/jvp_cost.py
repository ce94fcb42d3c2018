"""Cost of the PyTorch engine's fused jvp relative to its forward pass (float32, one thread).

    python bench/jvp_cost.py              # shapes A and C
    python bench/jvp_cost.py --repeats 9

Shapes: A = (R 1, L 4096, B 64, D 16, M 64), C = (R 16, L 256, B 32, D 8, M 4). Rows: the forward
op ``deepres::torch_stack`` (no checkpoints), the jvp op ``deepres::torch_stack_jvp`` with
tangents in h, u and v, with tangents in u and v only, and ``torch.func.jvp`` of
``deepres.residual_stack`` (forward + jvp op, what a user calls). Median of ``--repeats`` runs
after one warm-up, and the ratio to the forward.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

import deepres
from deepres.engines.torch_engine import torch_stack
from deepres.engines.torch_jvp import torch_stack_jvp

SHAPES = {"A": (1, 4096, 64, 16, 64), "C": (16, 256, 32, 8, 4)}


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _rows(replicas: int, depth: int, batch: int, dim: int, hidden: int) -> dict[str, Callable[[], object]]:
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(replicas, batch, dim, generator=gen)
    u = torch.randn(replicas, depth, hidden, dim, generator=gen) * dim**0.5
    v = torch.randn(replicas, depth, hidden, dim, generator=gen) * dim**0.5
    hd, ud, vd = torch.randn_like(h), torch.randn_like(u), torch.randn_like(v)
    c, a = 1.0 / (depth * hidden), 1.0 / dim

    def stack(hh: torch.Tensor, uu: torch.Tensor, vv: torch.Tensor) -> torch.Tensor:
        return deepres.residual_stack(hh, uu, vv, multiplier=c, pre_scale=a, backend="torch")

    return {
        "forward op": lambda: torch_stack(h, u, v, c, a, "tanh", 1, False),
        "jvp op, tangents h, u, v": lambda: torch_stack_jvp(h, u, v, hd, ud, vd, c, a, "tanh"),
        "jvp op, tangents u, v": lambda: torch_stack_jvp(h, u, v, None, ud, vd, c, a, "tanh"),
        "torch.func.jvp(residual_stack)": lambda: torch.func.jvp(stack, (h, u, v), (hd, ud, vd)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name, shape in SHAPES.items():
        replicas, depth, batch, dim, hidden = shape
        print(f"shape {name}: R={replicas} L={depth} B={batch} D={dim} M={hidden}, float32, 1 thread")
        base = None
        with torch.no_grad():
            for label, fn in _rows(*shape).items():
                seconds = _median_seconds(fn, args.repeats)
                base = base or seconds
                print(f"  {label:34s} {seconds * 1e3:9.1f} ms   {seconds / base:5.2f}x")


if __name__ == "__main__":
    main()
