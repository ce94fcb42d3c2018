"""The trainer: equals a hand-written GD loop, replicas train independently, non-finite replicas
are detected, frozen and reported, bad input is refused."""

from __future__ import annotations

import copy

import pytest
import torch

import deepres
from deepres import DeepResNet, MeanODENet
from deepres.scaling import scaled_parameters
from deepres.training import TrainResult, gradient_descent_step, train
from tests.helpers import relative_error


def _net(depth=6, hidden=3, replicas=3, seed=0):
    return deepres.DeepResNet(4, 3, depth=depth, dim=5, hidden=hidden, replicas=replicas, dtype=torch.float64,
                              generator=torch.Generator().manual_seed(seed))


def _data(seed=1, samples=7):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(samples, 4, generator=gen, dtype=torch.float64),
            torch.randn(samples, 3, generator=gen, dtype=torch.float64))


def _manual(net, x, y, steps, eta):
    """The plain loop the trainer must reproduce: ½·mean_n ‖f − y‖² per replica, summed."""
    outputs = [net(x).detach().clone()]
    for _ in range(steps):
        net.zero_grad()
        loss = 0.5 * (net(x) - y).pow(2).sum(-1).mean(-1).sum()
        loss.backward()
        gradient_descent_step(net, eta)
        outputs.append(net(x).detach().clone())
    return outputs


def test_train_matches_a_hand_written_loop():
    x, y = _data()
    net = _net()
    reference = copy.deepcopy(net)
    result = train(net, x, y, steps=4, eta=0.2, record_steps="all")
    expected = _manual(reference, x, y, 4, 0.2)
    assert result.record_steps == (0, 1, 2, 3, 4)
    assert relative_error(result.recorded_outputs, torch.stack(expected)) < 1e-12
    assert relative_error(result.outputs, expected[-1]) < 1e-12
    assert relative_error(net.stack.u, reference.stack.u) < 1e-12
    assert result.recorded_features.shape == (5, 3, 7, 5)
    assert relative_error(result.recorded_features[-1], net.features(x)) < 1e-12
    losses = 0.5 * (torch.stack(expected) - y).pow(2).sum(-1).mean(-1)
    assert relative_error(result.losses, losses) < 1e-12
    assert result.nonfinite_count == 0 and result.nonfinite_step.tolist() == [-1, -1, -1]


def test_replicas_train_as_independent_networks():
    x, y = _data(seed=2)
    net = _net(replicas=3, seed=3)
    singles = []
    for r in range(3):
        one = deepres.DeepResNet(4, 3, depth=6, dim=5, hidden=3, dtype=torch.float64)
        with torch.no_grad():
            one.embed_weight.copy_(net.embed_weight)
            one.readout_weight.copy_(net.readout_weight)
            one.stack.u.copy_(net.stack.u[r])
            one.stack.v.copy_(net.stack.v[r])
        singles.append(train(one, x, y, steps=3, eta=0.3).outputs)
    together = train(net, x, y, steps=3, eta=0.3).outputs
    assert relative_error(together, torch.stack(singles)) < 1e-12


def test_non_finite_replica_is_flagged_frozen_and_isolated():
    x, y = _data(seed=4)
    net = _net(replicas=3, seed=5)
    healthy = copy.deepcopy(net)
    with torch.no_grad():
        net.stack.v[1, 2, 0, 0] = float("nan")
    result = train(net, x, y, steps=3, eta=0.2)
    expected = train(healthy, x, y, steps=3, eta=0.2).outputs
    assert result.nonfinite.tolist() == [False, True, False]
    assert result.nonfinite_count == 1
    assert result.nonfinite_step.tolist() == [-1, 0, -1]
    keep = [0, 2]
    assert relative_error(result.outputs[keep], expected[keep]) < 1e-12
    # The frozen replica kept its initial (finite) weights where they were finite.
    assert torch.isfinite(net.stack.u[0]).all() and torch.isfinite(net.stack.u[2]).all()


def test_divergence_is_detected_at_the_step_it_happens():
    x, y = _data(seed=6)
    # float32 overflows within a few dozen steps of this far too large learning rate.
    net = deepres.DeepResNet(4, 3, depth=6, dim=5, hidden=3, replicas=2,
                             generator=torch.Generator().manual_seed(7))
    result = train(net, x.float(), y.float() * 1e3, steps=60, eta=50.0)
    assert result.nonfinite.any()
    steps = result.nonfinite_step[result.nonfinite]
    assert (steps > 0).all()
    bad = result.nonfinite.nonzero().flatten()
    assert not torch.isfinite(result.losses[-1, bad]).all()


def test_train_meanode_net_and_single_network():
    x, y = _data(seed=8)
    single = deepres.DeepResNet(4, 3, depth=5, dim=5, hidden=2, dtype=torch.float64)
    result = train(single, x, y, steps=2, eta=0.1, record_steps=[0, 2])
    assert result.outputs.shape == (7, 3) and result.losses.shape == (3,) and result.nonfinite.shape == ()
    from deepres.meanode import MeanODENet

    limit = MeanODENet.coupled_to(single, particles=8, steps=4)
    result = train(limit, x, y, steps=2, eta=0.1)
    assert result.outputs.shape == (7, 3)
    assert result.losses[-1] < result.losses[0]
    assert result.recorded_features.shape == (1, 7, 5)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [({"steps": -1}, ValueError), ({"steps": 1.5}, ValueError), ({"eta": 0.0}, ValueError),
     ({"eta": float("nan")}, ValueError), ({"record_steps": [5]}, ValueError),
     ({"record_steps": "some"}, TypeError)],
)
def test_bad_arguments(kwargs, error):
    x, y = _data()
    options = {"steps": 2, "eta": 0.1} | kwargs
    with pytest.raises(error):
        train(_net(), x, y, **options)


def test_bad_data_and_model():
    x, y = _data()
    with pytest.raises(ValueError, match="same N"):
        train(_net(), x, y[:3], steps=1, eta=0.1)
    with pytest.raises(TypeError, match="nn.Module"):
        train(lambda t: t, x, y, steps=1, eta=0.1)


def test_progress_callback_sees_every_step():
    x, y = _data()
    seen = []
    train(_net(), x, y, steps=3, eta=0.1, progress=seen.append)
    assert seen == [1, 2, 3]


def test_package_exports_the_trainer():
    import deepres

    assert deepres.train is train and deepres.TrainResult is TrainResult


def test_trained_embedding_and_readout_take_the_plain_learning_rate():
    net = DeepResNet(3, 2, depth=4, dim=5, hidden=2, train_embedding=True, train_readout=True,
                     dtype=torch.float64)
    multipliers = {record.name: record.lr_multiplier for record in scaled_parameters(net)}
    assert multipliers == {"embed_weight": 1.0, "readout_weight": 1.0,
                           "stack.u": net.lr_multiplier, "stack.v": net.lr_multiplier}
    limit = MeanODENet(3, 2, dim=5, particles=4, steps=2, solver="rk4", train_readout=True,
                       dtype=torch.float64)
    before = limit.readout_weight.detach().clone()
    x = torch.randn(6, 3, dtype=torch.float64)
    limit(x).sum().backward()
    gradient_descent_step(limit, eta=0.5)  # the rk4 multiplier is a per-node tensor
    assert torch.allclose(limit.readout_weight, before - 0.5 * limit.readout_weight.grad, atol=1e-15)


def _shared_net(replicas, seed=11):
    return deepres.DeepResNet(4, 3, depth=5, dim=5, hidden=2, replicas=replicas, train_embedding=True,
                              train_readout=True, dtype=torch.float64,
                              generator=torch.Generator().manual_seed(seed))


def _poison_inf_u(net):
    net.stack.u[1, 3, 1, 2] = float("inf")


def _poison_nan_v(net):
    net.stack.v[1, 3, 1, 2] = float("nan")


def _poison_overflow(net):
    net.stack.v[1] *= 1e200   # finite weights whose loss overflows to inf in the first forward pass


@pytest.mark.parametrize("poison", [_poison_inf_u, _poison_nan_v, _poison_overflow])
def test_a_diverging_replica_does_not_poison_shared_trained_weights(poison):
    """With a trained embedding and readout shared by the replicas, a replica that is non-finite
    from the start is cut out: the healthy ones train exactly as they would without it."""
    x, y = _data(seed=12)
    net = _shared_net(3)
    alone = _shared_net(2)
    with torch.no_grad():
        alone.stack.u.copy_(net.stack.u[[0, 2]])
        alone.stack.v.copy_(net.stack.v[[0, 2]])
        alone.embed_weight.copy_(net.embed_weight)
        alone.readout_weight.copy_(net.readout_weight)
        poison(net)
    result = train(net, x, y, steps=4, eta=0.2, record_steps="all")
    expected = train(alone, x, y, steps=4, eta=0.2, record_steps="all")
    assert result.nonfinite.tolist() == [False, True, False]
    assert result.nonfinite_step.tolist() == [-1, 0, -1]
    assert torch.isfinite(net.embed_weight).all() and torch.isfinite(net.readout_weight).all()
    assert relative_error(net.embed_weight, alone.embed_weight) < 1e-12
    assert relative_error(net.readout_weight, alone.readout_weight) < 1e-12
    assert relative_error(result.recorded_outputs[:, [0, 2]], expected.recorded_outputs) < 1e-12
    assert relative_error(result.losses[:, [0, 2]], expected.losses) < 1e-12


def test_frozen_replica_weights_are_never_updated():
    """A frozen replica's weights stay exactly where they were when it was frozen."""
    x, y = _data(seed=15)
    net = _net(replicas=3, seed=16)
    with torch.no_grad():
        net.stack.u[2, 0, 0, 0] = float("nan")
    before_u, before_v = net.stack.u[2].clone(), net.stack.v[2].clone()
    train(net, x, y, steps=3, eta=0.2)
    finite = torch.isfinite(before_u)
    assert torch.equal(net.stack.u[2][finite], before_u[finite])
    assert torch.equal(net.stack.v[2], before_v)


def test_an_infinite_weight_with_finite_outputs_is_flagged():
    """tanh saturates, so an infinite input weight can leave the outputs finite: still flagged."""
    x, y = _data(seed=17)
    net = _net(replicas=2, seed=18)
    with torch.no_grad():
        net.stack.u[0, 1, 0, 0] = float("inf")
    result = train(net, x, y, steps=2, eta=0.1)
    assert result.nonfinite.tolist() == [True, False]
    assert result.nonfinite_step.tolist() == [0, -1]


def test_targets_must_match_the_model_outputs():
    x, y = _data()
    with pytest.raises(ValueError, match=r"y must have shape \(N, d_out\) = \(7, 3\)"):
        train(_net(), x, y[:, :1], steps=1, eta=0.1)
    ode = MeanODENet(4, 3, dim=5, particles=4, steps=2, dtype=torch.float64)
    with pytest.raises(ValueError, match="3 outputs"):
        train(ode, x, torch.randn(7, 2, dtype=torch.float64), steps=1, eta=0.1)
