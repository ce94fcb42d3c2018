"""The custom operators pass PyTorch's own check (torch.library.opcheck): schema, fake tensors,
autograd registration and AOT dispatch with dynamic shapes, on odd shapes, with and without
replicas, for every checkpoint policy, in float32 and float64."""

from __future__ import annotations

import pytest
import torch

from deepres.engines.torch_engine import torch_stack, torch_stack_backward
from deepres.meanode import MeanODE
from deepres.meanode.ops import (
    BACKSOLVE,
    meanode_adjoint_backward,
    meanode_discrete_backward,
    meanode_solve,
)
from tests.helpers import random_stack_inputs

ALL = {"test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic"}


def _passes(op, args):
    result = torch.library.opcheck(op, args)
    assert set(result) == ALL and set(result.values()) == {"SUCCESS"}, result


@pytest.mark.parametrize(("replicas", "batch", "dim", "hidden", "depth", "every", "dtype"), [
    (1, 3, 5, 7, 9, 1, torch.float64), (3, 1, 4, 2, 7, 3, torch.float64), (2, 5, 3, 6, 11, 11, torch.float32),
    (1, 2, 6, 3, 5, 2, torch.float32)])
def test_torch_engine_ops(replicas, batch, dim, hidden, depth, every, dtype):
    h, u, v = random_stack_inputs(batch, dim, hidden, depth, replicas, seed=depth + every)
    h, u, v = (t.detach().to(dtype).requires_grad_() for t in (h, u, v))
    _passes(torch_stack, (h, u, v, 0.3 / (depth * hidden), dim**-0.5, "tanh", every, True))
    out, checkpoints = torch_stack(h.detach(), u.detach(), v.detach(), 0.1, 0.4, "gelu", every, True)
    grad = torch.randn_like(out)
    for needs in ([True, True, True], [False, True, False]):
        _passes(torch_stack_backward, (grad, h.detach(), checkpoints, u.detach(), v.detach(), 0.1, 0.4, "gelu",
                                       every, needs))


def test_torch_engine_op_with_half_weights_and_no_checkpoints():
    h, u, v = random_stack_inputs(3, 4, 2, 5, 2, seed=1)
    _passes(torch_stack, (h.float().requires_grad_(), u.bfloat16().requires_grad_(), v.bfloat16().requires_grad_(),
                          0.1, 0.5, "silu", 2, True))
    _passes(torch_stack, (h.float(), u.float(), v.float(), 0.1, 0.5, "relu", 2, False))


@pytest.mark.parametrize(("solver", "gradient", "every", "dtype"), [
    ("rk4", "adjoint", 1, torch.float64), ("midpoint", "adjoint", 2, torch.float64),
    ("euler", "adjoint", BACKSOLVE, torch.float32), ("rk4", "adjoint", BACKSOLVE, torch.float64),
    ("rk4", "discrete", 3, torch.float32), ("euler", "discrete", 1, torch.float64),
    ("midpoint", "discrete", 1, torch.float64)])
def test_meanode_ops(solver, gradient, every, dtype):
    steps = 4
    ode = MeanODE(3, 6, steps, solver=solver, particle_init="iid", dtype=dtype,
                  generator=torch.Generator().manual_seed(steps + every))
    h0 = torch.randn(5, 3, dtype=dtype, requires_grad=True)
    u, v = ode.u.detach().requires_grad_(), ode.v.detach().requires_grad_()
    options = (solver, steps, ode.field_multiplier, ode.pre_scale, "tanh", every)
    _passes(meanode_solve, (h0, u, v, *options, every == 1, gradient, 0))
    h1, checkpoints, _ = meanode_solve(h0.detach(), u.detach(), v.detach(), *options, False, gradient, 0)
    backward = meanode_adjoint_backward if gradient == "adjoint" else meanode_discrete_backward
    _passes(backward, (torch.randn_like(h1), h0.detach(), checkpoints, h1, u.detach(), v.detach(), *options, 0,
                       [True, True, False]))
