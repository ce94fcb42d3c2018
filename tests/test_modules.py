"""ResidualStack and DeepResNet: parameters, initialization, forward semantics."""

import math

import pytest
import torch

from deepres import DeepResNet, Parameterization, ResidualStack, residual_stack
from tests.helpers import relative_error


def test_stack_parameters_and_scalars():
    stack = ResidualStack(depth=12, dim=6, hidden=5, alpha=2.0, dtype=torch.float64)
    p = Parameterization("mlu", 12, 5, 6, 2.0)
    assert isinstance(stack.u, torch.nn.Parameter) and stack.u.shape == (12, 5, 6)
    assert stack.v.shape == (12, 5, 6) and stack.u.dtype == torch.float64
    assert (stack.multiplier, stack.pre_scale, stack.lr_multiplier) == (
        p.multiplier, p.pre_scale, p.lr_multiplier)
    assert all(isinstance(x, float) for x in (stack.multiplier, stack.pre_scale, stack.lr_multiplier))
    assert "depth=12" in repr(stack)


def test_init_statistics_follow_the_parameterization():
    generator = torch.Generator().manual_seed(0)
    stack = ResidualStack(depth=64, dim=16, hidden=32, generator=generator, dtype=torch.float64)
    assert stack.u.std().item() == pytest.approx(4.0, rel=0.02)  # √D
    assert stack.v.std().item() == pytest.approx(4.0, rel=0.02)
    assert abs(stack.u.mean().item()) < 0.05


def test_generator_makes_init_reproducible():
    a = ResidualStack(4, 3, 2, generator=torch.Generator().manual_seed(7))
    b = ResidualStack(4, 3, 2, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.u, b.u) and torch.equal(a.v, b.v)


def test_stack_forward_is_residual_stack():
    stack = ResidualStack(depth=9, dim=4, hidden=3, activation="silu", checkpoint_every=4,
                          dtype=torch.float64)
    h = torch.randn(5, 4, dtype=torch.float64)
    expected = residual_stack(h, stack.u, stack.v, multiplier=stack.multiplier,
                              pre_scale=stack.pre_scale, activation="silu", backend="reference")
    assert relative_error(stack(h), expected) <= 1e-13


def test_options_are_resolved_once_at_construction():
    # checkpoint_every is stored as the segment length k it resolves to; the forward reuses the options.
    from deepres._checks import BACKSOLVE
    from deepres.meanode import MeanODE

    net = DeepResNet(5, 3, depth=50, dim=6, hidden=2, checkpoint_every="sqrt", precision="tf32x3")
    assert net.stack.checkpoint_every == net.stack.options.every == 8  # ⌈√50⌉
    assert net.stack.precision == "tf32x3" and net.stack.backend == "auto"
    assert ResidualStack(6, 3, 2).checkpoint_every == 1  # None: h kept before every layer, k = 1
    assert ResidualStack(6, 3, 2, checkpoint_every=4).checkpoint_every == 4
    assert MeanODE(3, 4, 9, checkpoint_every="sqrt").checkpoint_every == 3
    assert MeanODE(3, 4, 9, checkpoint_every="backsolve").checkpoint_every == BACKSOLVE
    assert MeanODE(3, 4, 9).checkpoint_every == 1


def test_network_buffers_and_readout_convention():
    net = DeepResNet(5, 3, depth=8, dim=6, hidden=2, dtype=torch.float64,
                     generator=torch.Generator().manual_seed(1))
    buffers = dict(net.named_buffers())
    assert buffers["embed_weight"].shape == (6, 5) and buffers["readout_weight"].shape == (6, 3)
    assert {name for name, _ in net.named_parameters()} == {"stack.u", "stack.v"}
    x = torch.randn(10, 5, dtype=torch.float64)
    h_l = net.stack(x @ net.embed_weight.T)
    assert relative_error(net(x), h_l @ net.readout_weight / 6) <= 1e-14
    assert net.lr_multiplier == net.stack.lr_multiplier


def test_embedding_and_readout_scales():
    net = DeepResNet(50, 40, depth=2, dim=400, hidden=2, dtype=torch.float64,
                     generator=torch.Generator().manual_seed(2))
    assert net.embed_weight.std().item() == pytest.approx(1 / math.sqrt(50), rel=0.03)
    assert net.readout_weight.std().item() == pytest.approx(math.sqrt(40), rel=0.03)


def test_trainable_embedding_and_readout():
    net = DeepResNet(4, 2, depth=3, dim=5, hidden=2, train_embedding=True, train_readout=True)
    names = {name for name, _ in net.named_parameters()}
    assert names == {"embed_weight", "readout_weight", "stack.u", "stack.v"}
    net(torch.randn(3, 4)).sum().backward()
    assert net.embed_weight.grad is not None and net.readout_weight.grad is not None


def test_replicas_run_independent_networks_on_shared_input():
    net = DeepResNet(3, 2, depth=5, dim=4, hidden=3, replicas=3, dtype=torch.float64)
    x = torch.randn(7, 3, dtype=torch.float64)
    out = net(x)
    assert out.shape == (3, 7, 2)
    for r in range(3):
        h = residual_stack(x @ net.embed_weight.T, net.stack.u[r], net.stack.v[r],
                           multiplier=net.stack.multiplier, pre_scale=net.stack.pre_scale,
                           backend="reference")
        assert relative_error(out[r], h @ net.readout_weight / 4) <= 1e-13


def test_mlu_initial_network_is_identity_in_expectation():
    # With antithetic weights (u, v) and (u, −v) the two blocks cancel exactly.
    stack = ResidualStack(depth=1, dim=4, hidden=2, dtype=torch.float64)
    with torch.no_grad():
        stack.u[0, 1] = stack.u[0, 0]
        stack.v[0, 1] = -stack.v[0, 0]
    h = torch.randn(3, 4, dtype=torch.float64)
    assert torch.allclose(stack(h), h, atol=1e-14)
