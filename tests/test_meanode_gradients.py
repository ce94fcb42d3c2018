"""Gradients of the MeanODE: discrete route (gradcheck, autograd oracle, ResidualStack) and adjoint route
(plain oracle, checkpoint policies, order of agreement with the discrete route)."""

from __future__ import annotations

import math

import pytest
import torch

import deepres
from deepres.meanode import TABLEAUS, MeanODE
from deepres.meanode.ops import meanode_solve
from deepres.meanode.reference import reference_adjoint_gradients, reference_solve

F64 = torch.float64
SOLVERS = ("euler", "midpoint", "rk4")


def rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).norm() / ref.norm()).item()


def perturbed_ode(solver: str, steps: int, *, gradient: str = "adjoint", dim: int = 3, particles: int = 6,
                  activation: str = "tanh", checkpoint_every=None, seed: int = 0, alpha: float = 1.5,
                  ) -> MeanODE:
    """A float64 MeanODE whose node weights differ (a state reached by training, not the init)."""
    gen = torch.Generator().manual_seed(seed)
    ode = MeanODE(dim, particles, steps, alpha=alpha, solver=solver, gradient=gradient,
                  activation=activation, checkpoint_every=checkpoint_every, particle_init="iid",
                  dtype=F64, generator=gen)
    with torch.no_grad():
        ode.u.add_(torch.randn(ode.u.shape, dtype=F64, generator=gen))
        ode.v.add_(torch.randn(ode.v.shape, dtype=F64, generator=gen))
    return ode


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("checkpoint_every", [None, 2])
def test_discrete_route_gradcheck(solver, checkpoint_every):
    ode = perturbed_ode(solver, 3, dim=2, particles=3, checkpoint_every=checkpoint_every)
    gen = torch.Generator().manual_seed(1)
    h0 = torch.randn(2, 2, dtype=F64, generator=gen, requires_grad=True)
    u = ode.u.detach().clone().requires_grad_(True)
    v = ode.v.detach().clone().requires_grad_(True)

    def solve(h, a, b):
        return meanode_solve(h, a, b, solver, 3, ode.field_multiplier, ode.pre_scale, "tanh", ode.checkpoint_every, False,
                             "discrete", 0)[0]

    assert torch.autograd.gradcheck(solve, (h0, u, v))


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("activation", ["tanh", "gelu", "silu"])
def test_routes_match_their_plain_oracles(solver, activation):
    """discrete == autograd through the plain solver loop; adjoint == the plainly written adjoint scheme."""
    ode = perturbed_ode(solver, 5, activation=activation, seed=2)
    gen = torch.Generator().manual_seed(3)
    h0 = torch.randn(4, 3, dtype=F64, generator=gen, requires_grad=True)
    cotangent = torch.randn(4, 3, dtype=F64, generator=gen)
    ref = reference_solve(h0, ode.u, ode.v, ode.field_multiplier, ode.pre_scale, activation, solver)
    ref_h, ref_u, ref_v = torch.autograd.grad(ref, (h0, ode.u, ode.v), cotangent)
    for gradient in ("discrete", "adjoint"):
        ode.gradient = gradient
        h0.grad = ode.u.grad = ode.v.grad = None
        out = ode(h0)
        assert rel(out, ref) <= 1e-13
        out.backward(cotangent)
        if gradient == "adjoint":
            ref_h, ref_u, ref_v, _ = reference_adjoint_gradients(
                h0, ode.u.detach(), ode.v.detach(), cotangent, ode.field_multiplier, ode.pre_scale,
                activation, solver)
        assert rel(h0.grad, ref_h) <= 1e-12
        assert rel(ode.u.grad, ref_u) <= 1e-12
        assert rel(ode.v.grad, ref_v) <= 1e-12


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("gradient", ["adjoint", "discrete"])
def test_checkpoint_policies_give_the_same_gradient(solver, gradient):
    grads = []
    for policy in (None, 3, "sqrt", 100):
        ode = perturbed_ode(solver, 7, gradient=gradient, checkpoint_every=policy, seed=4)
        h0 = torch.randn(3, 3, dtype=F64, generator=torch.Generator().manual_seed(5), requires_grad=True)
        ode(h0).square().sum().backward()
        grads.append(torch.cat([h0.grad.flatten(), ode.u.grad.flatten(), ode.v.grad.flatten()]))
    for other in grads[1:]:
        assert rel(other, grads[0]) <= 1e-14


@pytest.mark.parametrize("particle_init", ["antithetic", "iid"])
def test_euler_equals_residual_stack_with_tied_init(particle_init):
    steps, particles, dim, alpha = 6, 4, 3, 2.0
    gen = torch.Generator().manual_seed(8)
    ode = MeanODE(dim, particles, steps, alpha=alpha, solver="euler", gradient="discrete",
                  particle_init=particle_init, dtype=F64, generator=gen)
    stack = deepres.ResidualStack(steps, dim, particles, alpha=alpha, backend="torch", dtype=F64)
    assert ode.lr_multiplier == stack.lr_multiplier
    assert math.isclose(ode.field_multiplier / (steps * particles), stack.multiplier, rel_tol=1e-15)
    with torch.no_grad():
        stack.u.copy_(ode.u)
        stack.v.copy_(ode.v)
    assert torch.equal(stack.u[0], stack.u[-1])  # tied: every block starts from the same particles
    h0 = torch.randn(5, dim, dtype=F64, generator=gen, requires_grad=True)
    target = torch.randn(5, dim, dtype=F64, generator=gen)
    outs = []
    for model in (ode, stack):
        h0.grad = None
        out = model(h0)
        (0.5 * (out - target).square().mean()).backward()
        outs.append((out.detach(), h0.grad.clone(), model.u.grad.clone(), model.v.grad.clone()))
    for mine, theirs in zip(outs[0], outs[1], strict=True):
        assert rel(mine, theirs) <= 1e-12
    ode.gradient = "adjoint"  # same forward on the adjoint route
    assert rel(ode(h0), outs[1][0]) <= 1e-12


def _smooth(coefs: list[torch.Tensor], s: torch.Tensor) -> torch.Tensor:
    s = s[:, None, None]
    return coefs[0] + torch.sin(math.pi * s) * coefs[1] + s.square() * coefs[2]


def smooth_ode(solver: str, steps: int, gradient: str = "adjoint", checkpoint_every=None) -> MeanODE:
    """A float64 MeanODE whose node weights are smooth functions of the depth s (a smooth problem)."""
    gen = torch.Generator().manual_seed(9)
    dim, particles = 3, 6
    u_coefs = [torch.randn(particles, dim, dtype=F64, generator=gen) * math.sqrt(dim) for _ in range(3)]
    v_coefs = [torch.randn(particles, dim, dtype=F64, generator=gen) * math.sqrt(dim) for _ in range(3)]
    ode = MeanODE(dim, particles, steps, alpha=2.0, solver=solver, gradient=gradient,
                  checkpoint_every=checkpoint_every, particle_init="iid", dtype=F64)
    with torch.no_grad():
        ode.u.copy_(_smooth(u_coefs, ode.node_times))
        ode.v.copy_(_smooth(v_coefs, ode.node_times))
    return ode


@pytest.mark.parametrize("solver", SOLVERS)
def test_backsolve_converges_to_the_checkpointed_adjoint(solver):
    """Re-integrating h backward changes the adjoint gradient by O(Δ^p) only."""
    errors = []
    for steps in (8, 16):
        grads = []
        for policy in (None, "backsolve"):
            ode = smooth_ode(solver, steps, checkpoint_every=policy)
            h0 = torch.randn(3, 3, dtype=F64, generator=torch.Generator().manual_seed(7), requires_grad=True)
            ode(h0).square().sum().backward()
            grads.append(torch.cat([h0.grad.flatten(), ode.u.grad.flatten(), ode.v.grad.flatten()]))
        errors.append(rel(grads[1], grads[0]))
    order = TABLEAUS[solver].order
    assert errors[0] < 0.2
    assert errors[1] < errors[0] * 2.0 ** (-order + 0.5)


def _weak_gap(solver: str, steps: int) -> float:
    """Relative gap of ⟨G_adjoint, δθ⟩ and ⟨G_discrete, δθ⟩ over several smooth directions δθ(s)."""
    gen = torch.Generator().manual_seed(10)
    dim, directions = 3, 6
    coefs = [[torch.randn(6, dim, dtype=F64, generator=gen) for _ in range(3)] for _ in range(2 * directions)]
    h0 = torch.randn(4, dim, dtype=F64, generator=gen)
    target = torch.randn(4, dim, dtype=F64, generator=gen)
    pairings = []
    for gradient in ("adjoint", "discrete"):
        ode = smooth_ode(solver, steps, gradient)
        s = ode.node_times
        (0.5 * (ode(h0) - target).square().sum()).backward()
        gu, gv = ode.u.grad, ode.v.grad
        if gradient == "adjoint":
            # As a covector the adjoint gradient is q_j·ρ_j with the tableau's induced weights
            # (midpoint's nodes 2i carry none; see tableaus.py).
            ratio = torch.tensor(TABLEAUS[solver].quadrature_weights(steps), dtype=F64) / ode.node_weights
            gu, gv = gu * ratio[:, None, None], gv * ratio[:, None, None]
        pairings.append(torch.stack([(gu * _smooth(coefs[2 * i], s)).sum()
                                     + (gv * _smooth(coefs[2 * i + 1], s)).sum()
                                     for i in range(directions)]))
    return rel(pairings[0], pairings[1])


@pytest.mark.parametrize("solver", SOLVERS)
def test_adjoint_and_discrete_gradients_agree_to_the_solver_order(solver):
    steps = [8, 16, 32, 64]
    gaps = [_weak_gap(solver, n) for n in steps]
    slope = -torch.linalg.lstsq(
        torch.tensor([[math.log(n), 1.0] for n in steps], dtype=F64),
        torch.tensor([[math.log(g)] for g in gaps], dtype=F64)).solution[0, 0].item()
    assert abs(slope - TABLEAUS[solver].order) < 0.35, (gaps, slope)


def test_float32_routes_agree_with_float64():
    ode64 = perturbed_ode("rk4", 4, seed=10)
    h0 = torch.randn(3, 3, dtype=F64, generator=torch.Generator().manual_seed(11))
    for gradient in ("adjoint", "discrete"):
        results = []
        for dtype in (F64, torch.float32):
            ode = perturbed_ode("rk4", 4, gradient=gradient, seed=10).to(dtype)
            x = h0.to(dtype).detach().requires_grad_(True)
            ode(x).square().sum().backward()
            results.append([t.to(F64) for t in (x.grad, ode.u.grad, ode.v.grad)])
        for single, double in zip(results[1], results[0], strict=True):
            assert rel(single, double) <= 1e-5
    assert ode64.u.dtype == F64


def test_only_requested_gradients_are_returned():
    ode = perturbed_ode("rk4", 3, seed=12)
    ode.v.requires_grad_(False)
    h0 = torch.randn(2, 3, dtype=F64)
    ode(h0).sum().backward()
    assert ode.u.grad is not None and ode.v.grad is None


@pytest.mark.parametrize("gradient", ["adjoint", "discrete"])
def test_reused_gradient_buffers_never_overwrite_visible_gradients(gradient):
    ode = perturbed_ode("rk4", 3, gradient=gradient, seed=13)
    h0 = torch.randn(2, 3, dtype=F64, generator=torch.Generator().manual_seed(14))
    ode(h0).square().sum().backward()
    first_u, first_v = ode.u.grad, ode.v.grad
    kept = first_u.clone(), first_v.clone()
    assert first_u.data_ptr() != first_v.data_ptr()
    ode.zero_grad(set_to_none=True)  # first_u, first_v are still referenced here
    (2 * ode(h0).square().sum()).backward()
    assert torch.equal(first_u, kept[0]) and torch.equal(first_v, kept[1])
    assert rel(ode.u.grad, 2 * kept[0]) <= 1e-14
    del first_u, first_v
    for _ in range(2):  # released buffers are written again; accumulation stays exact
        ode.zero_grad(set_to_none=True)
        ode(h0).square().sum().backward()
        ode(h0).square().sum().backward()
        assert rel(ode.u.grad, 2 * kept[0]) <= 1e-14 and rel(ode.v.grad, 2 * kept[1]) <= 1e-14
        assert ode.u.grad.data_ptr() != ode.v.grad.data_ptr()
    ode.zero_grad(set_to_none=True)  # two solves in one graph: both backward passes need buffers
    (ode(h0).square().sum() + ode(h0).square().sum()).backward()
    assert rel(ode.u.grad, 2 * kept[0]) <= 1e-14 and rel(ode.v.grad, 2 * kept[1]) <= 1e-14
