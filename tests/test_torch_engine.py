"""The PyTorch engine against the plain per-layer autograd reference."""

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from deepres import ACTIVATIONS, residual_stack
from deepres._checks import resolve_checkpoint_every
from deepres.engines.common import segments
from deepres.engines.reference import reference_residual_stack
from tests.helpers import random_stack_inputs, relative_error

C, A = 0.37, 0.61


def _outputs_and_grads(fn, h, u, v, seed=123):
    out = fn(h, u, v)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    weight = weight.to(out.dtype)
    grads = torch.autograd.grad((out * weight).sum(), (h, u, v))
    return (out, *grads)


def _compare(h, u, v, activation, checkpoint_every, tolerance, c=C, a=A):
    engine = lambda h, u, v: residual_stack(
        h, u, v, multiplier=c, pre_scale=a, activation=activation, backend="torch",
        checkpoint_every=checkpoint_every)
    reference = lambda h, u, v: reference_residual_stack(h, u, v, c, a, activation)
    # The reference runs in float64 on the same values: the float32 engine is held to the exact answer.
    h64, u64, v64 = (t.detach().double().requires_grad_() for t in (h, u, v))
    for name, got, want in zip(("h_L", "dh", "du", "dv"), _outputs_and_grads(engine, h, u, v),
                               _outputs_and_grads(reference, h64, u64, v64), strict=True):
        assert got.shape == want.shape and got.dtype == h.dtype
        assert relative_error(got, want) <= tolerance, (name, relative_error(got, want))


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("replicas", [None, 3])
@pytest.mark.parametrize("checkpoint_every", [None, 1, 2, 3, "sqrt", 50])
def test_matches_reference_float64(activation, replicas, checkpoint_every):
    h, u, v = random_stack_inputs(batch=5, dim=6, hidden=7, depth=11, replicas=replicas, seed=1)
    _compare(h, u, v, activation, checkpoint_every, 1e-12)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("checkpoint_every", [None, 4])
def test_matches_reference_float32(activation, checkpoint_every):
    depth, hidden, dim = 19, 10, 13
    h, u, v = random_stack_inputs(batch=9, dim=dim, hidden=hidden, depth=depth, replicas=2,
                                  dtype=torch.float32, seed=2)
    # The mlu scaling with α = 2 keeps the stack well conditioned, as in real use.
    _compare(h, u, v, activation, checkpoint_every, 1e-5, c=2.0 / (depth * hidden), a=1 / dim**0.5)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_gradcheck_float64(activation):
    h, u, v = random_stack_inputs(batch=3, dim=4, hidden=3, depth=5, replicas=2, seed=3)
    if activation == "relu":  # keep pre-activations away from the kink, where the gradient jumps
        with torch.no_grad():
            u.add_(torch.sign(u) * 0.2)
    fn = lambda h, u, v: residual_stack(h, u, v, multiplier=C, pre_scale=A,
                                        activation=activation, backend="torch", checkpoint_every=2)
    assert torch.autograd.gradcheck(fn, (h, u, v))


def test_replicas_are_independent_networks():
    h, u, v = random_stack_inputs(batch=4, dim=5, hidden=3, depth=6, replicas=3, seed=4)
    together = residual_stack(h, u, v, multiplier=C, pre_scale=A, backend="torch")
    for r in range(3):
        alone = residual_stack(h[r], u[r], v[r], multiplier=C, pre_scale=A, backend="torch")
        assert relative_error(together[r], alone) <= 1e-14


def test_input_is_left_unchanged_and_output_is_fresh():
    h, u, v = random_stack_inputs(batch=2, dim=3, hidden=2, depth=3, seed=5)
    before = h.detach().clone()
    out = residual_stack(h, u, v, multiplier=C, pre_scale=A, backend="torch")
    assert torch.equal(h.detach(), before)
    assert out.data_ptr() != h.data_ptr()


def test_half_weights_with_float32_stream_match_upcast_weights():
    h, u, v = random_stack_inputs(batch=4, dim=8, hidden=4, depth=5, dtype=torch.float32, seed=6)
    u16, v16 = u.detach().bfloat16().requires_grad_(), v.detach().bfloat16().requires_grad_()
    out = residual_stack(h, u16, v16, multiplier=C, pre_scale=A, backend="torch")
    ref = reference_residual_stack(h, u16.float(), v16.float(), C, A, "tanh")
    assert out.dtype == torch.float32
    assert relative_error(out, ref) <= 1e-6
    out.sum().backward()
    assert u16.grad.dtype == torch.bfloat16 and v16.grad.dtype == torch.bfloat16


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batch=st.integers(1, 6), dim=st.integers(1, 7), hidden=st.integers(1, 6),
    depth=st.integers(1, 9), replicas=st.one_of(st.none(), st.integers(1, 3)),
    every=st.one_of(st.none(), st.integers(1, 10), st.just("sqrt")),
    activation=st.sampled_from(ACTIVATIONS), seed=st.integers(0, 2**16),
)
# relu with its only unit off: the weight gradients are exactly zero, so the error is 0 and not 0/0.
@example(batch=1, dim=1, hidden=1, depth=1, replicas=None, every=None, activation="relu", seed=0)
def test_property_any_shape_matches_reference(batch, dim, hidden, depth, replicas, every,
                                              activation, seed):
    h, u, v = random_stack_inputs(batch, dim, hidden, depth, replicas, seed=seed)
    _compare(h, u, v, activation, every, 1e-12)


def test_checkpoint_policy():
    assert resolve_checkpoint_every(100, None) == 1
    assert resolve_checkpoint_every(100, "sqrt") == 10
    assert resolve_checkpoint_every(101, "sqrt") == 11
    assert resolve_checkpoint_every(5, 8) == 5  # k > L is one segment, as k = L (and 10**30 fits an int64)
    assert resolve_checkpoint_every(5, 10**30) == 5
    assert segments(7, 3) == [(0, 3), (3, 6), (6, 7)]
    assert segments(4, 8) == [(0, 4)]
