"""pytest-benchmark suite for the core kernels of deepres.

Run (outside the default test run, whose testpaths is ``tests``):

    python -m pytest bench/ --benchmark-only

Add ``--benchmark-json bench/results/kernels-<machine>.json`` to store the
figures, ``--benchmark-compare`` to compare with a stored run. Each benchmark
times one forward pass (no graph) or one training step (forward + backward of
Σ probe ⊙ h_L) of the residual stack, through the same providers as ``deepres
bench`` (:mod:`deepres.benchmark.providers`), so the numbers are comparable.
The Triton engine runs only on CUDA.
"""

from __future__ import annotations

import pytest
import torch

from deepres.benchmark.case import Case, make_inputs
from deepres.benchmark.providers import meanode_providers, stack_providers

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"

# (L, B, D, M): an overhead-dominated shape and a compute-heavier one.
SHAPES = [(256, 64, 16, 16), (1024, 64, 16, 64)]
PROVIDERS = ["reference", "eager", "deepres-torch", "deepres-torch-sqrt", "deepres-triton",
             "deepres-triton-sqrt"]
_BY_NAME = {p.name: p for p in stack_providers([None, "sqrt"]) + meanode_providers()}


def _runner(name: str, case: Case):
    provider = _BY_NAME[name]
    reason = provider.unavailable_reason(case)
    if reason is not None:
        pytest.skip(reason)
    runner = provider.build(case, make_inputs(case))
    runner.step()  # warm-up: allocator, lazy initialization

    def step() -> None:
        runner.step()
        if CUDA:
            torch.cuda.synchronize()

    return step


@pytest.mark.parametrize("mode", ["forward", "train"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "L{}-B{}-D{}-M{}".format(*s))
@pytest.mark.parametrize("name", PROVIDERS)
def test_stack(benchmark, name: str, shape: tuple[int, int, int, int], mode: str) -> None:
    depth, batch, dim, hidden = shape
    case = Case(depth=depth, batch=batch, dim=dim, hidden=hidden, mode=mode, device=DEVICE)
    step = _runner(name, case)
    benchmark.group = f"stack-{mode}-L{depth}-B{batch}-D{dim}-M{hidden}"
    benchmark.extra_info.update(case.to_dict())
    benchmark(step)


@pytest.mark.parametrize("name", ["deepres-torch", "eager"])
def test_stack_replicas(benchmark, name: str) -> None:
    # Eight networks: one replica launch (deepres) against eight looped modules (eager).
    case = Case(depth=256, batch=32, dim=16, hidden=16, replicas=8, device=DEVICE)
    step = _runner(name, case)
    benchmark.group = "stack-train-replicas8"
    benchmark.extra_info.update(case.to_dict())
    benchmark(step)


@pytest.mark.parametrize("name", ["autograd-rk4", "deepres-meanode-adjoint", "deepres-meanode-discrete",
                                  "torchdiffeq-odeint-adjoint"])
def test_meanode(benchmark, name: str) -> None:
    case = Case(workload="meanode", depth=16, batch=10, dim=8, hidden=2048, device=DEVICE)
    step = _runner(name, case)
    benchmark.group = "meanode-train-N16-K2048"
    benchmark.extra_info.update(case.to_dict())
    benchmark(step)
