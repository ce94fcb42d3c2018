"""DistributedDataParallel: two gloo processes on loopback give the single-process gradients
of ResidualStack and DeepResNet (each engine) and MeanODENet (each gradient route)."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from deepres import DeepResNet, ResidualStack
from deepres.engines.triton_support import unavailable_reason
from deepres.meanode import MeanODENet

WORLD = 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _dtype(backend: str) -> torch.dtype:
    # The Triton kernels compute in float32 (float64 would fall back to the PyTorch engine).
    return torch.float32 if backend == "triton" else torch.float64


def _build(kind: str, backend: str) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(0)
    if kind == "meanode":  # the limit has its own solvers; ``backend`` names its gradient route here
        return MeanODENet(3, 2, dim=4, particles=6, steps=3, solver="rk4", gradient=backend,
                          particle_init="iid", dtype=torch.float64, generator=generator)
    if kind == "stack":
        return ResidualStack(7, 4, 3, backend=backend, checkpoint_every=3, dtype=_dtype(backend),
                             generator=generator)
    return DeepResNet(3, 2, depth=6, dim=4, hidden=3, backend=backend, replicas=2,
                      dtype=_dtype(backend), generator=generator)


def _data(kind: str, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    out_shape = {"stack": (8, 4), "network": (2, 8, 2), "meanode": (8, 2)}[kind]
    x = torch.randn(8, 4 if kind == "stack" else 3, generator=generator, dtype=torch.float64)
    y = torch.randn(out_shape, generator=generator, dtype=torch.float64)
    return x.to(_dtype(backend)), y.to(_dtype(backend))


def _loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.5 * (model(x) - y).pow(2).sum(-1).mean()


def _cases() -> list[tuple[str, str]]:
    backends = ["torch", "reference"]
    if unavailable_reason(torch.device("cpu")) is None:  # Triton interpreter enabled (tests/conftest.py)
        backends.append("triton")
    cases = [(kind, backend) for kind in ("stack", "network") for backend in backends]
    return [*cases, ("meanode", "adjoint"), ("meanode", "discrete")]


def _worker(rank: int, port: int, out_path: str) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    grads = {}
    try:
        for kind, backend in _cases():
            net = _build(kind, backend)
            x, y = _data(kind, backend)
            share = x.shape[0] // WORLD
            x = x[rank * share:(rank + 1) * share]
            y = y[..., rank * share:(rank + 1) * share, :]
            model = DistributedDataParallel(net)
            _loss(model, x, y).backward()
            grads[kind, backend] = {name: p.grad for name, p in net.named_parameters()}
        if rank == 0:
            torch.save(grads, out_path)
        dist.barrier()  # no rank tears down its communication threads while the other still uses them
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def distributed_grads(tmp_path_factory):
    """Gradients from one 2-process gloo run (process start-up dominates: start it once)."""
    out_path = str(tmp_path_factory.mktemp("ddp") / "grads.pt")
    mp.spawn(_worker, args=(_free_port(), out_path), nprocs=WORLD, join=True)
    return torch.load(out_path)


@pytest.mark.parametrize(("kind", "backend"), _cases())
def test_ddp_gradients_equal_single_process(distributed_grads, kind, backend):
    net = _build(kind, backend)
    x, y = _data(kind, backend)
    _loss(net, x, y).backward()
    for name, param in net.named_parameters():
        error = ((distributed_grads[kind, backend][name] - param.grad).norm() / param.grad.norm()).item()
        # float64: equal up to the rounding of the all-reduce; float32 (Triton): to its rounding.
        assert error <= (1e-12 if _dtype(backend) == torch.float64 else 1e-6), (name, error)
