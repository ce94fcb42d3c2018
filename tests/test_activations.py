"""Activations: σ and σ' of every name against torch's own functions and autograd."""

import pytest
import torch

from deepres.activations import (
    ACTIVATIONS,
    TORCH_ACTIVATIONS,
    activation,
    activation_and_derivative,
    check_activation,
)

PLAIN = TORCH_ACTIVATIONS  # PyTorch's own functions


@pytest.mark.parametrize("name", ACTIVATIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_value_and_derivative_match_torch(name, dtype):
    z = torch.randn(257, 33, dtype=dtype, generator=torch.Generator().manual_seed(0)) * 3
    # The truth: torch's functions and autograd in float64 on the same values.
    z64 = z.double().requires_grad_()
    expected = PLAIN[name](z64)
    (slope,) = torch.autograd.grad(expected.sum(), z64)
    eps = torch.finfo(dtype).eps

    def ulps(got, want):  # error in units of the rounding of max(1, |want|)
        return ((got - want).abs() / (1 + want.abs())).max().item() / eps

    s, ds = activation_and_derivative(name, z)
    expected = expected.detach()
    assert s.dtype == ds.dtype == dtype
    # (torch's own float32 gelu is 8.5 ulps off here; ours are within 1.)
    assert ulps(s.double(), expected) <= 16
    assert ulps(ds.double(), slope) <= 16
    assert ulps(activation(name, z).double(), expected) <= 16


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_is_differentiable(name):
    z = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(activation(name, z).sum(), z)
    _, ds = activation_and_derivative(name, z.detach())
    assert torch.allclose(grad, ds, rtol=0, atol=1e-14)


def test_check_activation():
    assert check_activation("gelu") == "gelu"
    with pytest.raises(ValueError, match=r"activation must be one of \('tanh'.*got 'elu'"):
        check_activation("elu")
    with pytest.raises(TypeError, match="sigma must be a str"):
        check_activation(1, "sigma")
