"""MeanODE and MeanODENet: grid and particles, zero drift, the lr-multiplier convention, convergence
of the limit, coupling with DeepResNet, argument checks."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import deepres
from deepres.meanode import TABLEAUS, MeanODE, MeanODENet, init_particles
from deepres.meanode.reference import reference_adjoint_gradients
from deepres.training import gradient_descent_step

F64 = torch.float64
SOLVERS = ("euler", "midpoint", "rk4")


def rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize("solver,nodes", [("euler", 5), ("midpoint", 10), ("rk4", 11)])
def test_node_grid_and_lr_multiplier(solver, nodes):
    steps, particles, dim, alpha = 5, 4, 3, 2.0
    ode = MeanODE(dim, particles, steps, alpha=alpha, solver=solver, dtype=F64)
    assert ode.u.shape == ode.v.shape == (nodes, particles, dim)
    assert torch.equal(ode.u[0], ode.u[-1]) and torch.equal(ode.v[0], ode.v[-1])
    spacing = 1.0 / (steps * TABLEAUS[solver].nodes_per_step)
    assert torch.allclose(ode.node_times, torch.arange(nodes, dtype=F64) * spacing, rtol=0, atol=1e-15)
    assert math.isclose(ode.node_weights.sum().item(), 2.0 if solver == "midpoint" else 1.0, rel_tol=1e-12)
    assert ode.field_multiplier == alpha and ode.pre_scale == 1.0 / dim
    base = steps * particles * dim / alpha**2  # mlu: L·M·D/α² of the euler-equivalent ResNet
    if solver == "rk4":
        assert ode.lr_multiplier.shape == (nodes, 1, 1)
        expected = base * (1.0 / steps) / ode.node_weights
        assert torch.allclose(ode.lr_multiplier.flatten(), expected, rtol=1e-14)
    else:
        assert ode.lr_multiplier == base


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("particle_init", ["antithetic", "sobol"])
def test_paired_inits_have_zero_drift(solver, particle_init):
    gen = torch.Generator().manual_seed(0)
    ode = MeanODE(4, 64, 8, alpha=3.0, solver=solver, particle_init=particle_init, dtype=F64, generator=gen)
    h0 = torch.randn(6, 4, dtype=F64, generator=gen)
    h1, path = ode(h0, return_nodes=True)
    assert rel(h1, h0) <= 1e-15
    assert rel(path, h0.expand_as(path)) <= 1e-15
    iid = MeanODE(4, 64, 8, alpha=3.0, solver=solver, particle_init="iid", dtype=F64, generator=gen)
    assert rel(iid(h0), h0) > 1e-3  # i.i.d. particles: O(1/√K) drift


def test_particle_inits():
    gen = torch.Generator().manual_seed(1)
    for kind in ("antithetic", "sobol", "iid"):
        u, v = init_particles(kind, 4096, 3, 2.0, 0.5, dtype=F64, generator=gen)
        assert u.shape == v.shape == (4096, 3)
        assert abs(u.std().item() / 2.0 - 1) < 0.05 and abs(v.std().item() / 0.5 - 1) < 0.05
        if kind != "iid":
            assert torch.equal(u[0::2], u[1::2]) and torch.equal(v[0::2], -v[1::2])
    # Sobol points fill the law more evenly than i.i.d. draws: the mean of u is far closer to 0.
    sobol = init_particles("sobol", 4096, 3, 1.0, 1.0, dtype=F64, generator=gen)[0].mean(0).norm()
    iid = init_particles("iid", 4096, 3, 1.0, 1.0, dtype=F64, generator=gen)[0].mean(0).norm()
    assert sobol < iid / 5
    again = [init_particles("sobol", 8, 2, 1.0, 1.0, generator=torch.Generator().manual_seed(3))[0]
             for _ in range(2)]
    assert torch.equal(again[0], again[1])


@pytest.mark.parametrize("solver", SOLVERS)
def test_gradient_descent_step_is_the_pointwise_limit_update(solver):
    """One GD step with lr_multiplier moves node j, particle k by −η·(D/α²)·ρ_k(s_j) (docs/design.md §2)."""
    dim, particles, steps, alpha, eta = 3, 4, 4, 1.5, 0.05
    gen = torch.Generator().manual_seed(2)
    ode = MeanODE(dim, particles, steps, alpha=alpha, solver=solver, particle_init="iid", dtype=F64,
                  generator=gen)
    with torch.no_grad():
        ode.u.add_(torch.randn(ode.u.shape, dtype=F64, generator=gen))
        ode.v.add_(torch.randn(ode.v.shape, dtype=F64, generator=gen))
    h0 = torch.randn(5, dim, dtype=F64, generator=gen)
    y = torch.randn(5, dim, dtype=F64, generator=gen)
    u0, v0 = ode.u.detach().clone(), ode.v.detach().clone()
    h1, h_nodes = ode(h0, return_nodes=True)
    (0.5 * (h1 - y).square().sum(1).mean()).backward()
    gradient_descent_step(ode, eta)

    # By hand: b at the nodes from the plain adjoint oracle, ρ by autograd of α·bᵀv σ(a·uᵀh).
    grad_h1 = (h1.detach() - y) / h0.shape[0]
    *_, b_nodes = reference_adjoint_gradients(h0, u0, v0, grad_h1, ode.field_multiplier, ode.pre_scale, "tanh",
                                              solver)
    u_ref, v_ref = torch.empty_like(u0), torch.empty_like(v0)
    for j in range(ode.nodes):
        u = u0[j].clone().requires_grad_(True)
        v = v0[j].clone().requires_grad_(True)
        z = (h_nodes[j] @ u.T) / dim  # a = 1/D
        density = (alpha * (b_nodes[j] @ v.T) * torch.tanh(z)).sum()
        du, dv = torch.autograd.grad(density, (u, v))
        u_ref[j] = u0[j] - eta * dim / alpha**2 * du
        v_ref[j] = v0[j] - eta * dim / alpha**2 * dv
    assert rel(ode.u.detach() - u0, u_ref - u0) <= 1e-12
    assert rel(ode.v.detach() - v0, v_ref - v0) <= 1e-12


def _smooth_ode(solver: str, steps: int) -> MeanODE:
    gen = torch.Generator().manual_seed(4)
    coefs = [torch.randn(2, 8, 3, dtype=F64, generator=gen) * math.sqrt(3) for _ in range(3)]
    ode = MeanODE(3, 8, steps, solver=solver, particle_init="iid", dtype=F64, alpha=2.0)
    s = ode.node_times[:, None, None]
    with torch.no_grad():
        ode.u.copy_(coefs[0][0] + torch.sin(math.pi * s) * coefs[1][0] + s * coefs[2][0])
        ode.v.copy_(coefs[0][1] + torch.cos(math.pi * s) * coefs[1][1] + s * s * coefs[2][1])
    return ode


@pytest.mark.parametrize("solver", SOLVERS)
def test_limit_converges_as_the_grid_is_refined(solver):
    """Error to a refined solve shrinks like N^-p on a smooth parameter path."""
    h0 = torch.randn(4, 3, dtype=F64, generator=torch.Generator().manual_seed(5))
    errors, path_errors = [], []
    with torch.no_grad():
        reference, reference_path = _smooth_ode("rk4", 256)(h0, return_nodes=True)
        for n in (8, 16, 32):
            ode = _smooth_ode(solver, n)
            out, path = ode(h0, return_nodes=True)
            errors.append(rel(out, reference))
            # h at the nodes (half steps interpolated) against the refined path at the same times.
            index = torch.round(ode.node_times * 512).long()
            path_errors.append(rel(path, reference_path[index]))
    order = TABLEAUS[solver].order
    for history in (errors, path_errors):
        for coarse, fine in itertools.pairwise(history):
            assert fine < coarse * 2.0 ** (-order + 0.4), history


def test_trained_limit_converges_as_particles_grow():
    """After training steps, h(1) with K particles approaches a reference with many more particles."""
    dim, steps, eta = 3, 4, 0.2
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(8, dim, dtype=F64, generator=gen)
    y = torch.tanh(x @ torch.randn(dim, dim, dtype=F64, generator=gen))

    def trained(particles: int, seed: int) -> torch.Tensor:
        ode = MeanODE(dim, particles, steps, particle_init="antithetic", dtype=F64,
                      generator=torch.Generator().manual_seed(seed))
        for _ in range(3):
            ode.zero_grad()
            (0.5 * (ode(x) - y).square().sum(1).mean()).backward()
            gradient_descent_step(ode, eta)
        with torch.no_grad():
            return ode(x)

    reference = trained(2**13, 100)
    assert rel(reference, x) > 0.05  # training moved the limit away from the identity
    errors = [sum(rel(trained(k, seed), reference) for seed in range(3)) / 3 for k in (32, 512)]
    assert errors[1] < errors[0] / 2, errors


def test_meanodenet_coupled_to_a_resnet():
    in_f, out_f, dim, depth, hidden = 4, 2, 3, 6, 4
    gen = torch.Generator().manual_seed(7)
    resnet = deepres.DeepResNet(in_f, out_f, depth, dim, hidden, alpha=2.0, backend="torch", dtype=F64,
                                generator=gen)
    net = MeanODENet.coupled_to(resnet, particles=hidden, steps=depth, solver="euler",
                                particle_init="iid", generator=gen)
    assert net.embed_weight is resnet.embed_weight and net.readout_weight is resnet.readout_weight
    assert net.ode.parameterization.alpha == 2.0 and net.ode.u.dtype == F64
    assert net.lr_multiplier == resnet.lr_multiplier
    with torch.no_grad():  # tie the resnet to the limit's particles
        resnet.stack.u.copy_(net.ode.u)
        resnet.stack.v.copy_(net.ode.v)
    x = torch.randn(7, in_f, dtype=F64, generator=gen)
    assert rel(net(x), resnet(x)) <= 1e-12
    h1 = net.features(x)
    assert rel(net(x), h1 @ resnet.readout_weight / dim) <= 1e-15
    # rk4's per-node lr multiplier works with the shared training step.
    limit = MeanODENet.coupled_to(resnet, particles=8, steps=4, generator=gen)
    before = limit.ode.u.detach().clone()
    limit(x).square().mean().backward()
    gradient_descent_step(limit, 0.1)
    assert not torch.equal(before, limit.ode.u)


def test_meanodenet_draws_and_shares_weights():
    net = MeanODENet(5, 3, 4, 8, 2, dtype=F64, generator=torch.Generator().manual_seed(8))
    assert net.embed_weight.shape == (4, 5) and net.readout_weight.shape == (4, 3)
    assert "embed_weight" in dict(net.named_buffers())
    shared = torch.randn(4, 5, dtype=F64)
    other = MeanODENet(5, 3, 4, 8, 2, embed_weight=shared, train_readout=True)
    assert other.embed_weight is shared and other.ode.u.dtype == F64
    assert isinstance(other.readout_weight, torch.nn.Parameter)
    assert net(torch.randn(6, 5, dtype=F64)).shape == (6, 3)


@pytest.mark.parametrize("kwargs,error,match", [
    ({"steps": 0}, ValueError, "steps"),
    ({"steps": 2.5}, TypeError, "steps"),
    ({"particles": 0}, ValueError, "particles"),
    ({"solver": "rk5"}, ValueError, "solver"),
    ({"solver": 4}, TypeError, "solver"),
    ({"gradient": "exact"}, ValueError, "gradient"),
    ({"particle_init": "halton"}, ValueError, "particle_init"),
    ({"particles": 5}, ValueError, "even"),
    ({"particles": 5, "particle_init": "sobol"}, ValueError, "even"),
    ({"dtype": torch.float16}, TypeError, "dtype"),
    ({"checkpoint_every": 0}, ValueError, "checkpoint_every"),
    ({"checkpoint_every": "often"}, ValueError, "checkpoint_every"),
    ({"checkpoint_every": 1.5}, TypeError, "checkpoint_every"),
    ({"checkpoint_every": "backsolve", "gradient": "discrete"}, ValueError, "backsolve"),
    ({"activation": "softplus"}, ValueError, "activation"),
    ({"parameterization": "ntk"}, ValueError, "parameterization"),
    ({"alpha": -1.0}, ValueError, "alpha"),
])
def test_bad_construction_raises(kwargs, error, match):
    args = {"dim": 3, "particles": 4, "steps": 2, **kwargs}
    with pytest.raises(error, match=match):
        MeanODE(args.pop("dim"), args.pop("particles"), args.pop("steps"), **args)


def test_bad_inputs_raise():
    ode = MeanODE(3, 4, 2, dtype=F64)
    cases = [
        (torch.randn(5, 4, dtype=F64), ValueError, r"\(B, D\)"),
        (torch.randn(2, 5, 3, dtype=F64), ValueError, r"\(B, D\)"),
        (torch.randn(5, 3), TypeError, "dtype"),
        (torch.ones(5, 3, dtype=torch.int64), TypeError, "floating"),
        ([[0.0] * 3], TypeError, "h0"),
    ]
    for h0, error, match in cases:
        with pytest.raises(error, match=match):
            ode(h0)
    with pytest.raises(TypeError, match="return_nodes"):
        ode(torch.randn(2, 3, dtype=F64), return_nodes=1)
    with pytest.raises(ValueError, match="embed_weight"):
        MeanODENet(4, 2, 3, 4, 2, embed_weight=torch.randn(4, 3))
    with pytest.raises(TypeError, match="readout_weight"):
        MeanODENet(4, 2, 3, 4, 2, embed_weight=torch.randn(3, 4, dtype=F64),
                   readout_weight=torch.randn(3, 2))
    with pytest.raises(TypeError, match="DeepResNet"):
        MeanODENet.coupled_to(ode, particles=4, steps=2)
    net = MeanODENet(4, 2, 3, 4, 2, dtype=F64)
    with pytest.raises(ValueError, match="x must have shape"):
        net(torch.randn(5, 3, dtype=F64))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("gradient", ["adjoint", "discrete"])
def test_cuda_matches_cpu(gradient):
    results = []
    for device in ("cpu", "cuda"):
        ode = MeanODE(4, 256, 8, gradient=gradient, particle_init="iid", dtype=F64,
                      generator=torch.Generator().manual_seed(9)).to(device)
        h0 = torch.randn(6, 4, dtype=F64, generator=torch.Generator().manual_seed(10)).to(device)
        ode(h0).square().sum().backward()
        results.append([ode.u.grad.cpu(), ode.v.grad.cpu()])
    for cuda, cpu in zip(results[1], results[0], strict=True):
        assert rel(cuda, cpu) <= 1e-10
