"""MeanODE after construction: a kept gradient never changes; options are honoured exactly or refused."""

from __future__ import annotations

import pytest
import torch

from deepres import MeanODE


def _ode(**options):
    return MeanODE(dim=4, particles=8, steps=4, dtype=torch.float64, generator=torch.Generator().manual_seed(3),
                   **options)


def _gradients(ode, seed=0):
    h0 = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    ode.zero_grad(set_to_none=True)
    out = ode(h0)
    out.square().sum().backward()
    return out.detach(), ode.u.grad.clone(), ode.v.grad.clone()


def test_a_kept_gradient_storage_never_changes():
    ode = _ode()
    _gradients(ode)
    kept = ode.u.grad.untyped_storage()  # the user keeps the storage, not the tensor
    snapshot = bytes(kept)
    for seed in range(1, 4):  # later backward passes take buffers from the pool
        _gradients(ode, seed)
    assert bytes(kept) == snapshot


def test_the_pool_still_reuses_a_buffer_nobody_holds():
    ode = _ode()
    _gradients(ode)
    first = ode.u.grad.data_ptr()
    ode.zero_grad(set_to_none=True)
    ode(torch.ones(5, 4, dtype=torch.float64)).sum().backward()
    assert ode.u.grad.data_ptr() == first


@pytest.mark.parametrize(("name", "value"), [("solver", "euler"), ("particle_init", "sobol")])
def test_options_that_made_the_weights_are_refused_at_assignment(name, value):
    ode = _ode()
    with pytest.raises(AttributeError, match=f"MeanODE.{name} cannot change"):
        setattr(ode, name, value)
    setattr(ode, name, getattr(ode, name))  # the same value is no change
    assert ode.solver == "rk4" and ode.nodes == 9


@pytest.mark.parametrize(("name", "value", "base"), [
    ("checkpoint_every", 2, {}), ("checkpoint_every", "backsolve", {}), ("checkpoint_every", None, {"checkpoint_every": 2}),
    ("activation", "relu", {}), ("gradient", "discrete", {}), ("gradient", "adjoint", {"gradient": "discrete"}),
])
def test_options_read_at_every_forward_are_honoured_exactly(name, value, base):
    changed = _ode(**base)
    setattr(changed, name, value)
    built = _ode(**(base | {name: value}))
    assert repr(changed) == repr(built)
    assert changed._every == built._every  # the segment length the ops get (was left stale)
    for a, b in zip(_gradients(changed), _gradients(built), strict=True):
        assert torch.equal(a, b)


def test_discrete_gradient_on_a_backsolve_module_is_refused_naming_it():
    ode = _ode(checkpoint_every="backsolve")
    with pytest.raises(ValueError, match="gradient='discrete' needs the forward states"):
        ode.gradient = "discrete"
    assert ode.gradient == "adjoint"
    with pytest.raises(ValueError, match="solver must be one of"):
        ode.solver = "heun"


def test_a_huge_checkpoint_every_is_one_segment():
    reference = _gradients(_ode())
    for a, b in zip(_gradients(_ode(checkpoint_every=10**30)), reference, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
