"""Bad input raises a clear error that names the argument, the expected and the received value."""

import pytest
import torch

from deepres import DeepResNet, ResidualStack, residual_stack


def _inputs(h_shape=(4, 3), w_shape=(5, 2, 3), dtype=torch.float32):
    return torch.randn(h_shape, dtype=dtype), torch.randn(w_shape, dtype=dtype), torch.randn(w_shape, dtype=dtype)


def _call(h, u, v, **kwargs):
    options = {"multiplier": 0.1} | kwargs
    return residual_stack(h, u, v, **options)


@pytest.mark.parametrize(
    ("h_shape", "u_shape", "v_shape", "match"),
    [
        ((4, 3), (2, 3), (2, 3), r"u must have shape \(L, M, D\) or, with replicas, \(R, L, M, D\); got shape \(2, 3\)"),
        ((4, 3), (5, 2, 3), (5, 2, 4), r"v must have the shape of u, \(5, 2, 3\); got \(5, 2, 4\)"),
        ((4, 4), (5, 2, 3), (5, 2, 3), r"h must have shape \(B, D\) = \(B, 3\) .* got \(4, 4\)"),
        ((2, 4, 3), (5, 2, 3), (5, 2, 3), r"h must have shape \(B, D\)"),
        ((3, 4, 3), (2, 5, 2, 3), (2, 5, 2, 3), r"h must have shape \(R, B, D\) = \(2, B, 3\) .* got \(3, 4, 3\)"),
        ((0, 3), (5, 2, 3), (5, 2, 3), r"h must have positive sizes; got shape \(0, 3\)"),
        ((4, 3), (5, 0, 3), (5, 0, 3), r"u must have positive sizes"),
    ],
)
def test_shapes(h_shape, u_shape, v_shape, match):
    h, u, v = torch.randn(h_shape), torch.randn(u_shape), torch.randn(v_shape)
    with pytest.raises(ValueError, match=match):
        _call(h, u, v)


def test_types_and_dtypes():
    h, u, v = _inputs()
    with pytest.raises(TypeError, match="h must be a torch.Tensor; got list"):
        _call([[1.0]], u, v)
    with pytest.raises(TypeError, match="u must have a floating dtype; got torch.int64"):
        _call(h, u.long(), v)
    with pytest.raises(TypeError, match="u and v must share a dtype; got u torch.float32 and v torch.float64"):
        _call(h, u, v.double())
    with pytest.raises(TypeError, match="u and v must have h's dtype torch.float64"):
        _call(h.double(), u, v)
    with pytest.raises(TypeError, match="h must be float32 or float64 .* got torch.bfloat16"):
        _call(h.bfloat16(), u.bfloat16(), v.bfloat16())


def test_devices_must_match():
    h, u, v = _inputs()
    with pytest.raises(ValueError, match="h, u and v must be on one device; got h on cpu, u on meta"):
        _call(h, u.to("meta"), v.to("meta"))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"multiplier": float("inf")}, ValueError, "multiplier must be finite; got inf"),
        ({"multiplier": "0.1"}, TypeError, "multiplier must be a real number; got str"),
        ({"pre_scale": float("nan")}, ValueError, "pre_scale must be finite; got nan"),
        ({"pre_scale": True}, TypeError, "pre_scale must be a real number; got bool"),
        ({"activation": "softplus"}, ValueError, r"activation must be one of \('tanh'"),
        ({"activation": None}, TypeError, "activation must be a str"),
        ({"backend": "cuda"}, ValueError, r"backend must be one of \('auto', 'torch', 'triton', 'cpp', 'reference'\); got 'cuda'"),
        ({"checkpoint_every": 0}, ValueError, "checkpoint_every must be None, a positive int or 'sqrt'; got 0"),
        ({"checkpoint_every": "log"}, ValueError, "checkpoint_every must be .* got 'log'"),
        ({"checkpoint_every": 2.0}, TypeError, "checkpoint_every must be .* got float 2.0"),
        ({"precision": 1}, TypeError, "precision must be a str, one of .*; got int 1"),
        ({"precision": "fp64"}, ValueError, r"precision must be one of \('ieee', 'tf32x3', 'tf32'\); got 'fp64'"),
    ],
)
def test_options(kwargs, error, match):
    h, u, v = _inputs()
    with pytest.raises(error, match=match):
        _call(h, u, v, **kwargs)


def test_triton_backend_on_cpu_without_interpreter_says_why(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    h, u, v = _inputs()
    with pytest.raises(ValueError, match="backend='triton' cannot run here: .*"):
        _call(h, u, v, backend="triton")


def test_module_arguments():
    with pytest.raises(ValueError, match="depth must be a positive int; got 0"):
        ResidualStack(0, 4, 2)
    with pytest.raises(ValueError, match="parameterization must be one of"):
        ResidualStack(3, 4, 2, parameterization="ntk")
    with pytest.raises(ValueError, match="activation must be one of"):
        ResidualStack(3, 4, 2, activation="sigmoid")
    with pytest.raises(ValueError, match="backend must be one of"):
        ResidualStack(3, 4, 2, backend="jax")
    with pytest.raises(ValueError, match="checkpoint_every must be"):
        ResidualStack(3, 4, 2, checkpoint_every=-1)
    with pytest.raises(ValueError, match="replicas must be a positive int; got 0"):
        ResidualStack(3, 4, 2, replicas=0)
    with pytest.raises(TypeError, match="in_features must be a positive int; got str"):
        DeepResNet("5", 5, 3, 4, 2)


def test_network_input_checks():
    net = DeepResNet(5, 2, depth=3, dim=4, hidden=2)
    with pytest.raises(ValueError, match=r"x must have shape \(N, 5\); got \(3, 4\)"):
        net(torch.randn(3, 4))
    with pytest.raises(TypeError, match="x must have dtype torch.float32; got torch.float64"):
        net(torch.randn(3, 5, dtype=torch.float64))
    stack = ResidualStack(3, 4, 2, replicas=2)
    with pytest.raises(ValueError, match=r"h must have shape \(R, B, D\) = \(2, B, 4\)"):
        stack(torch.randn(6, 4))
