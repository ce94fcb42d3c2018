"""DistributedDataParallel: two gloo processes on loopback give the single-process gradients
of ResidualStack and DeepResNet (each engine) and MeanODENet (each gradient route)."""

from __future__ import annotations

import gc
import os
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from deepres import DeepResNet, ResidualStack
from deepres.engines.triton.support import unavailable_reason
from deepres.meanode import MeanODENet

WORLD = 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _dtype(variant: str) -> torch.dtype:
    # The Triton kernels compute in float32 (float64 would fall back to the PyTorch engine).
    return torch.float32 if variant == "triton" else torch.float64


def _build(kind: str, variant: str) -> torch.nn.Module:
    """The model of a case; ``variant`` is the engine (``backend``) of a stack or network, and the
    gradient route of a mean ODE."""
    generator = torch.Generator().manual_seed(0)
    if kind == "meanode":
        return MeanODENet(3, 2, dim=4, particles=6, steps=3, solver="rk4", gradient=variant,
                          particle_init="iid", dtype=torch.float64, generator=generator)
    if kind == "stack":
        return ResidualStack(7, 4, 3, backend=variant, checkpoint_every=3, dtype=_dtype(variant),
                             generator=generator)
    return DeepResNet(3, 2, depth=6, dim=4, hidden=3, backend=variant, replicas=2,
                      dtype=_dtype(variant), generator=generator)


def _data(kind: str, variant: str) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    out_shape = {"stack": (8, 4), "network": (2, 8, 2), "meanode": (8, 2)}[kind]
    x = torch.randn(8, 4 if kind == "stack" else 3, generator=generator, dtype=torch.float64)
    y = torch.randn(out_shape, generator=generator, dtype=torch.float64)
    return x.to(_dtype(variant)), y.to(_dtype(variant))


def _loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.5 * (model(x) - y).pow(2).sum(-1).mean()


def _cases() -> list[tuple[str, str]]:
    engines = ["torch", "reference"]
    if unavailable_reason(torch.device("cpu")) is None:  # Triton interpreter enabled (conftest.py)
        engines.append("triton")
    cases = [(kind, engine) for kind in ("stack", "network") for engine in engines]
    return [*cases, ("meanode", "adjoint"), ("meanode", "discrete")]


def _worker(rank: int, port: int, out_path: str) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    grads = {}
    try:
        for kind, variant in _cases():
            net = _build(kind, variant)
            x, y = _data(kind, variant)
            share = x.shape[0] // WORLD
            x = x[rank * share:(rank + 1) * share]
            y = y[..., rank * share:(rank + 1) * share, :]
            model = DistributedDataParallel(net)
            _loss(model, x, y).backward()
            grads[kind, variant] = {name: p.grad for name, p in net.named_parameters()}
            # Free the DDP wrapper while the process group is still registered. A wrapper that
            # outlives destroy_process_group() drops the group's last reference from its reducer's
            # destructor with the GIL held, and the group's destructor then joins a gloo thread
            # that waits for the GIL: the worker hangs at exit (seen on the 2-core CI machine).
            del model
            gc.collect()
        if rank == 0:
            torch.save(grads, out_path)
        dist.barrier()  # no rank tears down its communication threads while the other still uses them
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def distributed_grads(tmp_path_factory):
    """Gradients from one 2-process gloo run (process start-up dominates: start it once)."""
    out_path = str(tmp_path_factory.mktemp("ddp") / "grads.pt")
    context = mp.spawn(_worker, args=(_free_port(), out_path), nprocs=WORLD, join=False)
    # A hung worker fails the test instead of hanging the suite (the run takes ~15 s).
    deadline = time.monotonic() + 300
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the DDP workers did not finish within 300 s")
    return torch.load(out_path, weights_only=True)


@pytest.mark.parametrize(("kind", "variant"), _cases())
def test_ddp_gradients_equal_single_process(distributed_grads, kind, variant):
    net = _build(kind, variant)
    x, y = _data(kind, variant)
    _loss(net, x, y).backward()
    for name, param in net.named_parameters():
        error = ((distributed_grads[kind, variant][name] - param.grad).norm() / param.grad.norm()).item()
        # float64: equal up to the rounding of the all-reduce; float32 (Triton): to its rounding.
        assert error <= (1e-12 if _dtype(variant) == torch.float64 else 1e-6), (name, error)
