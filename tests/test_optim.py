"""Optimizer parameter groups: SGD reproduces gradient_descent_step, the Adam rule moves units and
output by the same amount at every depth and width under mlu, schedulers and foreign parameters work."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import deepres
from deepres import DeepResNet, MeanODE, MeanODENet, ResidualStack
from deepres.scaling import scaled_parameters
from tests.helpers import relative_error

F64 = torch.float64
PARAMETERIZATIONS = ("mlu", "depth_mup", "standard")


class _UserModel(nn.Module):
    """A user's model: their own layers around a deepres stack (the Linear layers are not deepres's)."""

    def __init__(self, parameterization, generator):
        super().__init__()
        self.inp = nn.Linear(3, 5, dtype=F64)
        self.stack = ResidualStack(6, 5, 3, alpha=0.7, parameterization=parameterization, dtype=F64,
                                   generator=generator)
        self.out = nn.Linear(5, 2, dtype=F64)
        with torch.no_grad():      # drawn from the test's generator, not the global one
            for p in (self.inp.weight, self.inp.bias, self.out.weight, self.out.bias):
                p.copy_(0.5 * torch.randn(p.shape, generator=generator, dtype=F64))

    def forward(self, x):
        return self.out(self.stack(torch.tanh(self.inp(x))))


def _model(kind, parameterization, seed=0):
    """(model, input) with every trainable deepres parameter a deepres module can have."""
    gen = torch.Generator().manual_seed(seed)
    options = {"alpha": 0.7, "parameterization": parameterization, "dtype": F64, "generator": gen}
    if kind == "stack":
        model, inputs = ResidualStack(6, 5, 3, **options), (7, 5)
    elif kind == "stack_replicas":
        model, inputs = ResidualStack(6, 5, 3, replicas=2, **options), (2, 7, 5)
    elif kind == "resnet":
        model = DeepResNet(3, 2, 6, 5, 3, train_embedding=True, train_readout=True, **options)
        inputs = (7, 3)
    elif kind == "meanode_rk4":           # a (nodes, 1, 1) multiplier
        model, inputs = MeanODE(4, 6, 3, solver="rk4", **options), (7, 4)
    elif kind == "meanode_euler":
        model, inputs = MeanODE(4, 6, 3, solver="euler", **options), (7, 4)
    elif kind == "meanode_net":
        model = MeanODENet(3, 2, 4, 6, 3, train_embedding=True, train_readout=True, **options)
        inputs = (7, 3)
    else:
        model, inputs = _UserModel(parameterization, gen), (7, 3)
    return model, torch.randn(*inputs, generator=torch.Generator().manual_seed(seed + 1), dtype=F64)


KINDS = ("stack", "stack_replicas", "resnet", "meanode_rk4", "meanode_euler", "meanode_net", "user")


def _backward(model, x):
    model.zero_grad(set_to_none=True)
    out = model(x)
    (0.5 * out.pow(2).sum() + out.sum()).backward()


def _state(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _update_error(model_a, model_b, before):
    """max over parameters of ‖Δa − Δb‖ / ‖Δb‖ (every Δb is non-zero: the loss has a linear term)."""
    a, b = dict(model_a.named_parameters()), dict(model_b.named_parameters())
    return max(relative_error(a[n] - before[n], b[n] - before[n]) for n in before)


@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
@pytest.mark.parametrize("kind", KINDS)
def test_one_sgd_step_is_gradient_descent_step(kind, parameterization):
    model, x = _model(kind, parameterization)
    reference = copy.deepcopy(model)
    before = _state(model)
    _backward(model, x)
    _backward(reference, x)
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    torch.optim.SGD(deepres.param_groups(model, 0.05)).step()
    deepres.gradient_descent_step(reference, 0.05)
    assert _update_error(model, reference, before) <= 1e-12
    # .grad is the loss's gradient again after the step (a per-node multiplier scales it only inside step()).
    assert all(torch.equal(p.grad, grads[n]) for n, p in model.named_parameters())


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("kind", ["resnet", "meanode_rk4", "user"])
def test_sgd_with_momentum_and_weight_decay_is_heavy_ball_with_the_multipliers(kind, foreach):
    """v ← μ·v + P·g + λ·w, w ← w − η·v elementwise (P the multiplier, a tensor for rk4): every
    parameter shrinks by η·λ per step whatever its multiplier."""
    eta, mu, lam = 0.03, 0.9, 0.2
    model, x = _model(kind, "mlu", seed=3)
    reference = copy.deepcopy(model)
    optimizer = torch.optim.SGD(deepres.param_groups(model, eta, weight_decay=lam), momentum=mu,
                                foreach=foreach)
    records = list(scaled_parameters(reference))
    velocity = [torch.zeros_like(r.parameter) for r in records]
    for _ in range(3):
        before = _state(model)
        _backward(model, x)
        optimizer.step()
        _backward(reference, x)
        with torch.no_grad():
            for record, v in zip(records, velocity, strict=True):
                p, m = record.parameter, record.lr_multiplier
                v.mul_(mu).add_(p.grad * m + lam * p)
                p.sub_(eta * v)
        assert _update_error(model, reference, before) <= 1e-12


def _one_adam_step(depth, hidden, parameterization, optimizer="adam", seed=0, dim=8, lr=0.05):
    """(relative movement of u and v, RMS movement of the output) after one step on fixed data."""
    net = DeepResNet(4, 4, depth, dim, hidden, parameterization=parameterization, dtype=F64, backend="torch",
                     generator=torch.Generator().manual_seed(seed))
    data = torch.Generator().manual_seed(100)      # the same x, y at every shape (W_E, W_U too: drawn first)
    x = torch.randn(32, 4, generator=data, dtype=F64)
    y = torch.randn(32, 4, generator=data, dtype=F64)
    weights = torch.cat([net.stack.u.detach().flatten(), net.stack.v.detach().flatten()])
    f0 = net(x).detach()
    opt_class = torch.optim.Adam if optimizer == "adam" else torch.optim.AdamW
    opt = opt_class(deepres.param_groups(net, lr, optimizer=optimizer, weight_decay=0.1))
    (0.5 * (net(x) - y).pow(2).sum(-1).mean()).backward()
    opt.step()
    moved = torch.cat([net.stack.u.detach().flatten(), net.stack.v.detach().flatten()]) - weights
    return (moved.norm() / weights.norm()).item(), (net(x).detach() - f0).pow(2).mean().sqrt().item()


def _within(a, b, factor):
    return max(a, b) <= factor * min(a, b)


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_adam_coordinate_check_mlu(optimizer):
    """Under mlu, one Adam step moves the units and the output by the same amount at L = 16 and
    L = 1024, and at M = 4 and M = 64 (within a factor 1.5)."""
    for small, large in (((16, 4), (1024, 4)), ((16, 4), (16, 64))):
        unit_a, out_a = _one_adam_step(*small, "mlu", optimizer)
        unit_b, out_b = _one_adam_step(*large, "mlu", optimizer)
        assert _within(unit_a, unit_b, 1.5), (small, large, unit_a, unit_b)
        assert _within(out_a, out_b, 1.5), (small, large, out_a, out_b)
        assert out_a > 1e-3 and unit_a > 1e-3     # the step does move them


def test_adam_rule_of_depth_mup_moves_the_output_alike_and_units_like_one_over_root_lm():
    unit_a, out_a = _one_adam_step(16, 4, "depth_mup")
    unit_b, out_b = _one_adam_step(1024, 4, "depth_mup")
    assert _within(out_a, out_b, 1.5), (out_a, out_b)
    assert _within(unit_a / unit_b, math.sqrt(1024 / 16), 1.2), (unit_a, unit_b)


def test_plain_adam_on_the_standard_resnet_moves_the_output_more_at_depth():
    """standard has no depth rule (A = 1): the output's movement grows with L (documented)."""
    _, out_a = _one_adam_step(16, 4, "standard")
    _, out_b = _one_adam_step(1024, 4, "standard")
    assert out_b > 3 * out_a, (out_a, out_b)


@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
def test_group_values_follow_the_rule_table(parameterization):
    alpha, L, M, D, d_in = 0.7, 6, 3, 5, 3
    net = DeepResNet(d_in, 2, L, D, M, alpha=alpha, parameterization=parameterization,
                     train_embedding=True, train_readout=True, dtype=F64)
    eta, lam, eps = 0.01, 0.3, 1e-8
    P = {"mlu": L * M * D / alpha**2, "depth_mup": 1.0, "standard": 1.0}[parameterization]
    A = {"mlu": 1 / alpha, "depth_mup": 1 / (alpha * math.sqrt(L * M)), "standard": 1.0}[parameterization]
    G = {"mlu": alpha / (L * M * D), "depth_mup": alpha / (math.sqrt(L * M) * D), "standard": 1.0}[parameterization]
    s_u = {"mlu": math.sqrt(D), "depth_mup": 1.0, "standard": 1 / math.sqrt(D)}[parameterization]
    s_v = {"mlu": math.sqrt(D), "depth_mup": 1.0, "standard": 1 / math.sqrt(M)}[parameterization]
    expected = {  # name: (P, A, G, coupled Adam decay)
        "stack.u": (P, A, G, lam * G / s_u), "stack.v": (P, A, G, lam * G / s_v),
        "embed_weight": (1.0, 1 / d_in, 1.0, lam), "readout_weight": (1.0, 1.0, 1.0, lam),
    }
    for optimizer in ("sgd", "adam", "adamw"):
        groups = deepres.param_groups(net, eta, optimizer=optimizer, weight_decay=lam, eps=eps)
        assert sorted(g["names"][0] for g in groups) == sorted(expected)
        for group in groups:
            p, a, g, coupled = expected[group["names"][0]]
            lr, decay = {"sgd": (eta * p, lam / p), "adam": (eta * a, coupled), "adamw": (eta * a, lam / a)}[optimizer]
            assert group["lr"] == pytest.approx(lr, rel=1e-12)
            assert group["weight_decay"] == pytest.approx(decay, rel=1e-12)
            assert ("eps" in group) == (optimizer != "sgd")
            if optimizer != "sgd":
                assert group["eps"] == pytest.approx(eps * g, rel=1e-12)


@pytest.mark.parametrize("parameterization", ["mlu", "depth_mup"])
@pytest.mark.parametrize("shape", [(16, 4, 8), (256, 4, 8), (16, 64, 8), (16, 4, 32)])
def test_eps_is_scaled_to_the_size_of_the_gradients(parameterization, shape):
    """The predicted gradient scale G is the median gradient entry within a factor 5 (so ε·G stays
    far below the gradients however large L·M is)."""
    L, M, D = shape
    net = DeepResNet(4, 4, L, D, M, parameterization=parameterization, dtype=F64,
                     generator=torch.Generator().manual_seed(0))
    data = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 4, generator=data, dtype=F64), torch.randn(32, 4, generator=data, dtype=F64)
    (0.5 * (net(x) - y).pow(2).sum(-1).mean()).backward()
    for group in deepres.param_groups(net, 1.0, optimizer="adam", eps=1.0):
        ratio = group["params"][0].grad.abs().median().item() / group["eps"]
        assert 0.2 <= ratio <= 5, (group["names"], ratio)


def test_adam_moves_every_meanode_node_by_the_same_step():
    """Adam's first step is ±η·A per entry (A = 1/α under mlu) at every node of a rk4 MeanODE:
    the per-node gradient weights do not leak into the update."""
    model, x = _model("meanode_rk4", "mlu")
    before = model.u.detach().clone()
    _backward(model, x)
    torch.optim.Adam(deepres.param_groups(model, 0.01, optimizer="adam")).step()
    step = (model.u.detach() - before).abs()
    assert torch.allclose(step, torch.full_like(step, 0.01 / 0.7), rtol=1e-6)


@pytest.mark.parametrize("kind", ["resnet", "meanode_rk4"])
def test_lr_schedulers_scale_every_group(kind):
    """After k StepLR(γ) steps, a step with the groups is gradient_descent_step with η·γ^k."""
    eta, gamma = 0.05, 0.5
    model, x = _model(kind, "mlu", seed=5)
    reference = copy.deepcopy(model)
    optimizer = torch.optim.SGD(deepres.param_groups(model, eta))
    initial = [g["lr"] for g in optimizer.param_groups]
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=gamma)
    for k in range(3):
        assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([lr * gamma**k for lr in initial])
        before = _state(model)
        _backward(model, x)
        optimizer.step()
        scheduler.step()
        _backward(reference, x)
        deepres.gradient_descent_step(reference, eta * gamma**k)
        assert _update_error(model, reference, before) <= 1e-12


def test_one_cycle_with_a_max_lr_per_group_keeps_the_ratios_between_groups():
    model, _ = _model("resnet", "mlu")
    groups = deepres.param_groups(model, 1e-3, optimizer="adamw")
    optimizer = torch.optim.AdamW(groups)
    peak = [g["lr"] for g in groups]
    one_cycle = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peak, total_steps=10)
    for _ in range(4):
        optimizer.step()
        one_cycle.step()
        lrs = [g["lr"] for g in optimizer.param_groups]
        assert [lr / lrs[0] for lr in lrs] == pytest.approx([lr / peak[0] for lr in peak], rel=1e-12)


def test_parameters_deepres_does_not_own_pass_through_unscaled():
    model, _ = _model("user", "mlu")
    for optimizer in ("sgd", "adam", "adamw"):
        groups = deepres.param_groups(model, 0.01, optimizer=optimizer, weight_decay=0.1, eps=1e-7)
        other = [g for g in groups if g["role"] == "other"]
        assert len(other) == 1
        assert other[0]["names"] == ["inp.weight", "inp.bias", "out.weight", "out.bias"]
        assert other[0]["params"] == [model.inp.weight, model.inp.bias, model.out.weight, model.out.bias]
        assert other[0]["lr"] == 0.01 and other[0]["weight_decay"] == 0.1
        assert other[0].get("eps", 1e-7) == 1e-7
        scaled = [g for g in groups if g["role"] != "other"]
        assert [g["names"] for g in scaled] == [["stack.u"], ["stack.v"]]
        if optimizer == "sgd":
            assert scaled[0]["lr"] == pytest.approx(0.01 * model.stack.lr_multiplier)
    frozen = DeepResNet(3, 2, 4, 5, 2)
    frozen.stack.v.requires_grad_(False)
    assert [g["names"] for g in deepres.param_groups(frozen, 0.1)] == [["stack.u"]]


@pytest.mark.parametrize("name, torch_class, optimizer", [
    ("ScaledSGD", torch.optim.SGD, "sgd"), ("ScaledAdam", torch.optim.Adam, "adam"),
    ("ScaledAdamW", torch.optim.AdamW, "adamw")])
def test_thin_optimizers_are_the_torch_optimizers_over_the_groups(name, torch_class, optimizer):
    model, x = _model("meanode_net", "mlu")
    reference = copy.deepcopy(model)
    before = _state(model)
    ours = getattr(deepres, name)(model, lr=0.02, weight_decay=0.1)
    assert isinstance(ours, torch_class)
    theirs = torch_class(deepres.param_groups(reference, 0.02, optimizer=optimizer, weight_decay=0.1))
    for _ in range(2):
        _backward(model, x)
        _backward(reference, x)
        ours.step()
        theirs.step()
    assert _update_error(model, reference, before) == 0.0


def test_closure_steps_are_refused_with_per_node_multipliers_and_state_dicts_round_trip():
    model, x = _model("meanode_rk4", "mlu")
    optimizer = torch.optim.SGD(deepres.param_groups(model, 0.1), momentum=0.5)

    def closure():
        _backward(model, x)
        return 0.0

    with pytest.raises(RuntimeError, match="closure"):
        optimizer.step(closure)
    _backward(model, x)
    optimizer.step()
    restored = torch.optim.SGD(deepres.param_groups(copy.deepcopy(model), 0.1), momentum=0.5)
    restored.load_state_dict(optimizer.state_dict())
    assert all(torch.equal(a["grad_scale"], b["grad_scale"])
               for a, b in zip(optimizer.param_groups, restored.param_groups, strict=True) if "grad_scale" in a)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"optimizer": "lamb"}, ValueError, "optimizer must be one of"),
    ({"lr": -0.1}, ValueError, "lr must be ≥ 0"),
    ({"lr": float("nan")}, ValueError, "lr must be finite"),
    ({"lr": "0.1"}, TypeError, "lr must be a real number"),
    ({"weight_decay": -1.0}, ValueError, "weight_decay must be ≥ 0"),
    ({"eps": 0.0, "optimizer": "adam"}, ValueError, "eps must be > 0"),
])
def test_bad_arguments_are_refused(kwargs, error, match):
    arguments = {"lr": 0.1, **kwargs}
    with pytest.raises(error, match=match):
        deepres.param_groups(DeepResNet(3, 2, 4, 5, 2), **arguments)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        deepres.param_groups("net", 0.1)


def test_package_exports():
    for name in ("param_groups", "ScaledSGD", "ScaledAdam", "ScaledAdamW"):
        assert name in deepres.__all__ and hasattr(deepres, name)
