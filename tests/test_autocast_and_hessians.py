"""Autocast keeps the float32 residual stream; higher-order gradients are exact or refused clearly.

Autocast: inside ``torch.autocast("cpu", dtype=torch.bfloat16)`` the stack, the modules and the
mean ODE return float32 with a float32-level error against float64, and backward works inside and
outside the region. Second order: gradgradcheck passes for every engine that runs here and for the
discrete mean-ODE route; the adjoint route refuses with a message that names the alternative.
"""

from __future__ import annotations

import copy

import pytest
import torch

import deepres
from deepres.engines.triton.support import unavailable_reason
from tests.helpers import random_stack_inputs, relative_error

AUTOCAST = {"device_type": "cpu", "dtype": torch.bfloat16}
ENGINES = ["torch", "reference"] + (["triton"] if unavailable_reason(torch.device("cpu")) is None else [])


def _stack_inputs(seed=0):
    h, u, v = random_stack_inputs(6, 8, 4, 24, seed=seed)
    return h.detach(), (u * 8**0.5).detach(), (v * 8**0.5).detach()


@pytest.mark.parametrize(("backend", "backward_inside"), [
    *((engine, inside) for engine in ENGINES if engine != "reference" for inside in (True, False)),
    # The reference is plain autograd: a backward run inside the region follows autocast like any
    # PyTorch code (autocast's own documentation advises running backward outside it).
    ("reference", False)])
def test_functional_stack_keeps_float32_under_autocast(backend, backward_inside):
    """float32 stream and output; only the Triton engine reads the weights in bfloat16 (then the
    truth is the float64 stack on bfloat16-rounded weights, and the weight gradients come back
    through bfloat16)."""
    h64, u64, v64 = (t.requires_grad_() for t in _stack_inputs())
    options = {"multiplier": 1 / 96, "pre_scale": 1 / 8}
    weights = (lambda w: w.bfloat16().double()) if backend == "triton" else (lambda w: w)
    expected = deepres.residual_stack(h64, weights(u64), weights(v64), backend="reference", **options)
    expected_grads = torch.autograd.grad(expected.square().sum(), (h64, u64, v64))
    h, u, v = (t.detach().float().requires_grad_() for t in (h64, u64, v64))
    with torch.autocast(**AUTOCAST):
        out = deepres.residual_stack(h, u, v, backend=backend, **options)
        if backward_inside:
            grads = torch.autograd.grad(out.square().sum(), (h, u, v))
    if not backward_inside:
        grads = torch.autograd.grad(out.square().sum(), (h, u, v))
    assert out.dtype == torch.float32
    assert relative_error(out, expected) <= 1e-5
    tolerances = (1e-5, 1e-2, 1e-2) if backend == "triton" else (1e-5, 1e-5, 1e-5)
    for got, want, tolerance in zip(grads, expected_grads, tolerances, strict=True):
        assert got.dtype == torch.float32 and relative_error(got, want) <= tolerance


def test_a_bfloat16_stream_from_an_autocast_layer_is_taken_as_float32():
    h, u, v = (t.float() for t in _stack_inputs(1))
    with torch.autocast(**AUTOCAST):
        h_half = torch.nn.functional.linear(h, torch.eye(8))   # what an autocast-ed layer hands over
        assert h_half.dtype == torch.bfloat16
        out = deepres.residual_stack(h_half, u, v, multiplier=1 / 96, pre_scale=1 / 8)
    assert out.dtype == torch.float32
    with pytest.raises(TypeError, match="h must be float32 or float64"):
        deepres.residual_stack(h.bfloat16(), u, v, multiplier=1 / 96, pre_scale=1 / 8)  # outside: refused


@pytest.mark.parametrize("make", [
    lambda dtype: deepres.DeepResNet(5, 3, depth=16, dim=8, hidden=4, dtype=dtype, train_readout=True,
                                     generator=torch.Generator().manual_seed(5)),
    lambda dtype: deepres.MeanODENet(5, 3, dim=8, particles=8, steps=4, dtype=dtype,
                                     generator=torch.Generator().manual_seed(6)),
    lambda dtype: deepres.MeanODENet(5, 3, dim=8, particles=8, steps=4, dtype=dtype, gradient="discrete",
                                     generator=torch.Generator().manual_seed(6)),
])
def test_modules_keep_their_precision_under_autocast(make):
    x = torch.randn(7, 5, generator=torch.Generator().manual_seed(7))
    model = make(torch.float32)
    model64 = copy.deepcopy(model).double()
    with torch.autocast(**AUTOCAST):
        x_half = torch.nn.functional.linear(x, torch.eye(5))   # a bfloat16 input, as autocast makes it
        out = model(x_half)
        grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
    expected = model64(x_half.double())   # the input's own rounding is not the model's error
    expected_grads = torch.autograd.grad(expected.square().sum(), list(model64.parameters()))
    assert out.dtype == torch.float32
    assert relative_error(out, expected) <= 1e-5
    for got, want in zip(grads, expected_grads, strict=True):
        assert relative_error(got, want) <= 1e-5


@pytest.mark.parametrize("backend", ENGINES)
@pytest.mark.parametrize("checkpoint_every", [None, 2])
def test_second_order_gradients_of_every_engine(backend, checkpoint_every):
    h, u, v = random_stack_inputs(3, 3, 2, 5, 2, seed=8)
    if backend == "triton":
        h, u, v = (t.detach().float().requires_grad_() for t in (h, u, v))

    def stack(h, u, v):
        return deepres.residual_stack(h, u, v, multiplier=0.3, pre_scale=0.7, backend=backend,
                                      checkpoint_every=checkpoint_every)

    if backend == "triton":  # float32 kernels: compare Hessian–vector products with the float64 reference
        direction = [torch.randn_like(t) for t in (h, u, v)]

        def hvp(fn, inputs):
            grads = torch.autograd.grad(fn(*inputs).square().sum(), inputs, create_graph=True)
            return torch.autograd.grad(sum((g * d.to(g.dtype)).sum() for g, d in zip(grads, direction,
                                                                                    strict=True)), inputs)

        plain = [t.detach().double().requires_grad_() for t in (h, u, v)]
        expected = hvp(lambda *a: deepres.residual_stack(*a, multiplier=0.3, pre_scale=0.7, backend="reference"),
                       plain)
        for got, want in zip(hvp(stack, (h, u, v)), expected, strict=True):
            assert relative_error(got, want) <= 1e-5
    else:
        assert torch.autograd.gradgradcheck(stack, (h, u, v))


def test_the_hessian_of_the_stack_matches_the_reference():
    """The case that was silently wrong: a Hessian row through the engine equals the reference's."""
    h, u, v = random_stack_inputs(4, 3, 2, 6, 1, seed=9)

    def hessian_row(backend):
        out = deepres.residual_stack(h, u, v, multiplier=0.2, pre_scale=0.5, backend=backend, checkpoint_every=2)
        (grad_u,) = torch.autograd.grad(out.square().sum(), (u,), create_graph=True)
        return torch.autograd.grad(grad_u[0, 1, 0, :].sum(), (u,))[0]

    assert relative_error(hessian_row("torch"), hessian_row("reference")) <= 1e-12


@pytest.mark.parametrize("solver", ["euler", "midpoint", "rk4"])
def test_discrete_meanode_route_is_twice_differentiable(solver):
    ode = deepres.MeanODE(2, 4, 3, solver=solver, gradient="discrete", particle_init="iid", dtype=torch.float64,
                          checkpoint_every=2, generator=torch.Generator().manual_seed(10))
    h0 = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda h: ode(h), (h0,))
    (grad_u,) = torch.autograd.grad(ode(h0).square().sum(), (ode.u,), create_graph=True)
    second = torch.autograd.grad(grad_u.sum(), (ode.v,))[0]
    assert torch.isfinite(second).all() and second.abs().sum() > 0


def test_adjoint_meanode_route_refuses_second_order_clearly():
    ode = deepres.MeanODE(2, 4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(11))
    h0 = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match="use gradient='discrete'"):
        torch.autograd.grad(ode(h0).square().sum(), (h0,), create_graph=True)
    ode(h0).square().sum().backward()   # first order is fine
    assert ode.u.grad is not None
