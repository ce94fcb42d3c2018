"""Input that used to be accepted without a word is now an error, a documented behaviour, or works:
one checker per decision, with the same error type everywhere."""

from __future__ import annotations

import re

import pytest
import torch

import deepres
from tests.helpers import random_stack_inputs, relative_error


def _stack():
    h, u, v = random_stack_inputs(4, 3, 2, 5)
    return h.detach(), u.detach(), v.detach()


def test_a_multiplier_that_requires_grad_is_refused():
    h, u, v = _stack()
    with pytest.raises(TypeError, match="multiplier must be a real number, not a tensor that requires grad"):
        deepres.residual_stack(h, u, v, multiplier=torch.tensor(0.1, requires_grad=True))
    out = deepres.residual_stack(h, u, v, multiplier=torch.tensor(0.25))  # a constant tensor is fine
    assert relative_error(out, deepres.residual_stack(h, u, v, multiplier=0.25)) == 0.0


@pytest.mark.parametrize("backend", ["torch", "reference"])
@pytest.mark.parametrize("precision", ["tf32", "tf32x3"])
def test_tf32_with_an_engine_that_has_no_tf32_is_an_error(backend, precision):
    h, u, v = _stack()
    with pytest.raises(ValueError, match=f"precision='{precision}' is not what backend='{backend}' computes"):
        deepres.residual_stack(h, u, v, multiplier=0.1, backend=backend, precision=precision)
    with pytest.raises(ValueError, match="the TF32 precisions apply to the Triton engine only"):
        deepres.ResidualStack(4, 3, 2, backend=backend, precision=precision)
    # "ieee" is what these engines compute: accepted, same result as the default.
    out = deepres.residual_stack(h, u, v, multiplier=0.1, backend=backend, precision="ieee")
    assert torch.equal(out, deepres.residual_stack(h, u, v, multiplier=0.1, backend=backend))


def test_the_reason_an_engine_cannot_run_is_one_function(monkeypatch):
    import deepres.engines.triton.support as support
    from deepres.engines.registry import unavailable_reason

    cpu = torch.device("cpu")
    assert unavailable_reason("auto", cpu) is None and unavailable_reason("torch", cpu) is None
    monkeypatch.setattr(support, "interpreter_enabled", lambda: False)  # CPU tensors, no interpreter
    reason = unavailable_reason("triton", cpu)
    assert reason is not None and ("CPU" in reason or "not installed" in reason)
    with pytest.raises(ValueError, match=re.escape(f"backend='triton' cannot run here: {reason}")):
        deepres.functional.check_backend("triton", cpu)  # its error says the same, word for word


def test_a_precision_asked_of_auto_applies_where_triton_runs():
    # On CPU tensors "auto" picks a CPU engine (the C++ one, or the PyTorch one without a build):
    # a TF32 request does not apply there.
    h, u, v = _stack()
    chosen = deepres.functional.select_engine("auto", h, u)
    assert chosen in ("cpp", "torch")
    out = deepres.residual_stack(h, u, v, multiplier=0.1, precision="tf32")
    assert torch.equal(out, deepres.residual_stack(h, u, v, multiplier=0.1, backend=chosen))


@pytest.mark.parametrize(("call", "error"), [
    (lambda: deepres.residual_stack(*_stack(), multiplier=0.1, backend=1), TypeError),
    (lambda: deepres.ResidualStack(4, 3, 2, backend=1), TypeError),
    (lambda: deepres.residual_stack(*_stack(), multiplier=0.1, backend="cuda"), ValueError),
    (lambda: deepres.ResidualStack(4, 3, 2, backend="cuda"), ValueError),
    (lambda: deepres.ResidualStack(4, 3, 2, activation=None), TypeError),
    (lambda: deepres.MeanODE(3, 4, 2, activation="elu"), ValueError),
    (lambda: deepres.MeanODE(3, 4, 2, solver=4), TypeError),
    (lambda: deepres.Parameterization("mup", 2, 2, 2), ValueError),
    (lambda: deepres.ResidualStack(4, 3, 2, checkpoint_every="backsolve"), ValueError),
    (lambda: deepres.MeanODE(3, 4, 2, checkpoint_every=1.5), TypeError),
    (lambda: deepres.residual_stack(*_stack(), multiplier=0.1, precision=1), TypeError),
    (lambda: deepres.ResidualStack(4, 3, 2, precision="fp64"), ValueError),
])
def test_one_checker_per_decision_gives_one_error_type(call, error):
    with pytest.raises(error):
        call()


def test_half_precision_deep_resnet_keeps_a_float32_stream():
    net = deepres.DeepResNet(5, 3, depth=8, dim=4, hidden=2, dtype=torch.bfloat16)
    assert net.stack.u.dtype == torch.bfloat16
    assert net.embed_weight.dtype == net.readout_weight.dtype == torch.float32
    x = torch.randn(6, 5)
    out = net(x)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    out.square().sum().backward()
    assert net.stack.u.grad.dtype == torch.bfloat16


def test_a_meanode_converted_to_half_precision_is_refused():
    ode = deepres.MeanODE(3, 4, 2).half()
    with pytest.raises(TypeError, match=r"float32 or float64 .*\.half\(\)"):
        ode(torch.randn(2, 3).half())
