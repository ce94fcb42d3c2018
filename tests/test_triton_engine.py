"""The Triton engine against the PyTorch engine.

Without CUDA these run in Triton's interpreter (tests/conftest.py sets
``TRITON_INTERPRET=1``), with tiny odd shapes; the ``gpu`` tests need a CUDA
device. The references run in float64 on the same values, so the float32
kernels are held to the exact answer (relative error ≤ 1e-5). Every call runs
with PyTorch's uninitialized-memory filling on, so an output element that a
kernel forgets to write is NaN and fails the comparison.
"""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deepres import ACTIVATIONS, residual_stack
from deepres.engines.torch_engine import torch_residual_stack
from deepres.engines.triton_support import unavailable_reason
from tests.helpers import random_stack_inputs, relative_error

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
_REASON = unavailable_reason(DEVICE)
pytestmark = pytest.mark.skipif(_REASON is not None, reason=f"Triton backend unavailable: {_REASON}")
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

if _REASON is None:
    import triton
    import triton.language as tl
    from deepres.kernels.activations import activation_and_derivative
    from deepres.kernels.launch import MAX_FUSED_DIM, StackConfig

    from deepres.engines.triton_engine import triton_residual_stack, triton_stack

    @triton.jit
    def _activation_kernel(z_ptr, s_ptr, ds_ptr, N, ACT: tl.constexpr, BLOCK: tl.constexpr):
        offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offsets < N
        s, ds = activation_and_derivative(tl.load(z_ptr + offsets, mask=mask, other=0.0), ACT)
        tl.store(s_ptr + offsets, s, mask=mask)
        tl.store(ds_ptr + offsets, ds, mask=mask)


@pytest.fixture(autouse=True)
def _nan_filled_empty_tensors():
    """torch.empty returns NaN-filled memory while a test runs (unwritten outputs show)."""
    previous = (torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.utils.deterministic.fill_uninitialized_memory)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
    torch.utils.deterministic.fill_uninitialized_memory = previous[2]


def _inputs(replicas, batch, dim, hidden, depth, seed):
    """Fresh float64 N(0, 1) h, u, v (replica form) and the scalars c, a of a well-conditioned stack."""
    h, u, v = random_stack_inputs(batch, dim, hidden, depth, replicas, seed=seed)
    # a = 1/√D makes the pre-activations O(1) (the nonlinearity matters); c = 2/(L·M) is mlu with α = 2.
    return h, u, v, 2.0 / (depth * hidden), dim**-0.5


def _outputs_and_grads(fn, h, u, v, seed):
    out = fn(h, u, v)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    grads = torch.autograd.grad((out * weight.to(out.device, out.dtype)).sum(), (h, u, v))
    return (out, *grads)


def _compare(replicas, batch, dim, hidden, depth, every, activation, *, seed=0, tolerance=1e-5,
             weight_dtype=torch.float32, allow_tf32=False, deterministic=False, config=None):
    """Triton (float32 h) vs the PyTorch engine in float64 on the same values: h_L, ∂h_0, ∂u, ∂v."""
    h, u, v, c, a = _inputs(replicas, batch, dim, hidden, depth, seed)
    with torch.no_grad():  # the reference sees exactly the (rounded) weights the kernels see
        u.copy_(u.to(weight_dtype).double())
        v.copy_(v.to(weight_dtype).double())
    triton_args = [h.detach().float(), u.detach().to(weight_dtype), v.detach().to(weight_dtype)]
    triton_args = [t.to(DEVICE).requires_grad_() for t in triton_args]
    fused = lambda h, u, v: triton_residual_stack(h, u, v, c, a, activation, every, allow_tf32=allow_tf32,
                                                  deterministic=deterministic, config=config)
    engine = lambda h, u, v: torch_residual_stack(h, u, v, c, a, activation, every)
    got = _outputs_and_grads(fused, *triton_args, seed + 1)
    want = _outputs_and_grads(engine, h, u, v, seed + 1)
    for name, x, ref, arg in zip(("h_L", "dh", "du", "dv"), got, want, (h, *triton_args), strict=True):
        assert x.shape == ref.shape and x.dtype == (torch.float32 if name == "h_L" else arg.dtype), name
        error = relative_error(x.cpu(), ref)
        # Half-precision weight gradients are returned rounded to the weights' dtype.
        limit = tolerance if x.dtype == torch.float32 else max(tolerance, torch.finfo(x.dtype).eps)
        assert error <= limit, (name, error)
    return got


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_matches_torch_engine_odd_shapes_with_replicas(activation):
    # B, D, M not powers of two and below the 16-wide blocks; L = 5 is not a multiple of every = 2.
    _compare(2, 5, 6, 7, 5, 2, activation, seed=1)


@pytest.mark.parametrize("every", [1, 3, 5, 8])
def test_checkpoint_segment_lengths(every):
    # every = 1: checkpoints are the layer inputs (no recompute); 8 > L: a single segment.
    _compare(3, 6, 5, 9, 5, every, "tanh", seed=2)


@pytest.mark.parametrize("deterministic", [False, True])
def test_several_batch_and_hidden_tiles(deterministic):
    # 3 batch tiles (atomic or per-tile partial weight gradients) × 2 hidden tiles, D padded 20 → 32.
    config = StackConfig(block_b=16, block_d=32, block_m=16)
    _compare(2, 37, 20, 20, 4, 3, "gelu", seed=3, deterministic=deterministic, config=config)


def test_deterministic_mode_is_bitwise_reproducible():
    config = StackConfig(block_b=16, block_d=16, block_m=16)
    first = _compare(1, 40, 9, 11, 3, 2, "silu", seed=4, deterministic=True, config=config)
    second = _compare(1, 40, 9, 11, 3, 2, "silu", seed=4, deterministic=True, config=config)
    for x, y in zip(first, second, strict=True):
        assert torch.equal(x, y)


def test_float16_weights_with_float32_stream():
    _compare(2, 5, 6, 7, 4, 2, "tanh", seed=5, weight_dtype=torch.float16)


@pytest.mark.parametrize("needs", [(True, False, False), (False, True, True), (False, False, True)])
def test_only_requested_gradients(needs):
    h, u, v, c, a = _inputs(2, 5, 6, 7, 4, seed=6)
    args = [t.detach().float().to(DEVICE).requires_grad_(need) for t, need in zip((h, u, v), needs, strict=True)]
    out = triton_residual_stack(*args, c, a, "relu", 2)
    out.square().sum().backward()
    ref_args = [t.detach().requires_grad_(need) for t, need in zip((h, u, v), needs, strict=True)]
    torch_residual_stack(*ref_args, c, a, "relu", 2).square().sum().backward()
    for got, want in zip(args, ref_args, strict=True):
        assert (got.grad is None) == (want.grad is None)
        if want.grad is not None:
            assert relative_error(got.grad.cpu(), want.grad) <= 1e-5


def test_forward_without_grad_matches():
    h, u, v, c, a = _inputs(2, 7, 6, 5, 6, seed=7)
    with torch.no_grad():
        out = triton_residual_stack(h.float().to(DEVICE), u.float().to(DEVICE), v.float().to(DEVICE),
                                    c, a, "identity", 4)
    assert relative_error(out.cpu(), torch_residual_stack(h, u, v, c, a, "identity", 4)) <= 1e-5


def test_public_api_unbatched_sqrt_checkpoints():
    h, u, v, c, a = _inputs(None, 5, 6, 3, 10, seed=8)
    kwargs = {"multiplier": c, "pre_scale": a, "activation": "gelu", "checkpoint_every": "sqrt"}
    fused = lambda h, u, v: residual_stack(h, u, v, backend="triton", **kwargs)
    engine = lambda h, u, v: residual_stack(h, u, v, backend="torch", **kwargs)
    args32 = [t.detach().float().to(DEVICE).requires_grad_() for t in (h, u, v)]
    for got, want in zip(_outputs_and_grads(fused, *args32, 9), _outputs_and_grads(engine, h, u, v, 9),
                         strict=True):
        assert got.shape == want.shape
        assert relative_error(got.cpu(), want) <= 1e-5


def test_wide_embedding_falls_back_with_a_warning():
    dim = MAX_FUSED_DIM + 1
    h, u, v, c, a = _inputs(1, 2, dim, 2, 2, seed=10)
    h, u, v = (t.detach().float().to(DEVICE) for t in (h, u, v))
    with pytest.warns(UserWarning, match=f"D = {dim} exceeds the largest fused embedding dimension"):
        out = residual_stack(h, u, v, multiplier=c, pre_scale=a, backend="triton")
    assert torch.equal(out, residual_stack(h, u, v, multiplier=c, pre_scale=a, backend="torch"))


def test_float64_falls_back_with_a_warning():
    h, u, v, c, a = _inputs(1, 3, 4, 2, 2, seed=11)
    h, u, v = (t.detach().to(DEVICE) for t in (h, u, v))
    with pytest.warns(UserWarning, match="compute in float32"):
        out = residual_stack(h, u, v, multiplier=c, pre_scale=a, backend="triton")
    assert out.dtype == torch.float64
    assert torch.equal(out, residual_stack(h, u, v, multiplier=c, pre_scale=a, backend="torch"))


def _kernel_activation(z, activation):
    z32 = z.float().to(DEVICE)
    s, ds = torch.empty_like(z32), torch.empty_like(z32)
    _activation_kernel[(triton.cdiv(z32.numel(), 1024),)](z32, s, ds, z32.numel(), ACT=activation, BLOCK=1024)
    return s.cpu(), ds.cpu()


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_kernel_activations_match_deepres_activations(activation):
    from deepres.activations import activation_and_derivative as torch_pair

    z = torch.cat([torch.linspace(-30, 30, 601, dtype=torch.float64), 3 * torch.randn(400, dtype=torch.float64)])
    z = z.float().double()  # values exactly representable in float32
    for got, want in zip(_kernel_activation(z, activation), torch_pair(activation, z), strict=True):
        torch.testing.assert_close(got.double(), want, rtol=2e-6, atol=2e-7)


def test_kernel_tanh_is_relatively_accurate_near_zero():
    magnitude = torch.logspace(-8, 0, 500, dtype=torch.float64)
    z = torch.cat([magnitude, -magnitude]).float().double()
    s, _ = _kernel_activation(z, "tanh")
    torch.testing.assert_close(s.double(), torch.tanh(z), rtol=2e-6, atol=0.0)


def test_second_order_gradients_are_exact():
    """A differentiable gradient (create_graph=True) goes through the plain reference: the Hessian–vector
    products of the fused engine equal the reference's (float32 kernels, float32 reference)."""
    h, u, v, c, a = _inputs(1, 3, 4, 2, 3, seed=12)
    h, u, v = (t.detach().float().to(DEVICE).requires_grad_() for t in (h, u, v))

    def hessian_vector(fn):
        (grad,) = torch.autograd.grad(fn(h, u, v).square().sum(), (u,), create_graph=True)
        return torch.autograd.grad((grad * torch.ones_like(grad)).sum(), (h, u, v))

    fused = hessian_vector(lambda h, u, v: triton_residual_stack(h, u, v, c, a, "tanh", 2))
    plain = hessian_vector(lambda h, u, v: residual_stack(h[0], u[0], v[0], multiplier=c, pre_scale=a,
                                                          backend="reference").unsqueeze(0))
    for got, want in zip(fused, plain, strict=True):
        assert relative_error(got, want) <= 1e-5


def test_custom_ops_pass_opcheck():
    h, u, v, c, a = _inputs(2, 5, 3, 2, 3, seed=21)
    h, u, v = (t.detach().float().to(DEVICE).requires_grad_() for t in (h, u, v))
    result = torch.library.opcheck(triton_stack, (h, u, v, c, a, "tanh", 2, True, False, False, []),
                                   test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
    assert set(result.values()) == {"SUCCESS"}


@gpu
def test_gpu_bfloat16_weights():
    _compare(2, 100, 64, 48, 32, 6, "tanh", seed=20, weight_dtype=torch.bfloat16)


@gpu
def test_gpu_tf32_is_close_but_not_exact():
    _compare(1, 200, 64, 64, 32, 8, "gelu", seed=21, allow_tf32=True, tolerance=1e-2)


@gpu
@pytest.mark.parametrize(("dim", "hidden"), [(256, 256), (128, 200), (33, 500)])
def test_gpu_large_shapes(dim, hidden):
    _compare(2, 300, dim, hidden, 64, 8, "silu", seed=22)


@gpu
def test_gpu_deterministic_many_tiles_reproducible():
    first = _compare(1, 2048, 64, 64, 16, 4, "tanh", seed=23, deterministic=True)
    second = _compare(1, 2048, 64, 64, 16, 4, "tanh", seed=23, deterministic=True)
    for x, y in zip(first, second, strict=True):
        assert torch.equal(x, y)


def _compile_reports(*args):
    """Run deepres.kernels.compile_check in a fresh process without the interpreter."""
    import json
    import os
    import subprocess
    import sys

    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-m", "deepres.kernels.compile_check", "--json", *args],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def _has_bundled_ptxas():
    import os

    import triton

    return os.path.exists(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin"))


@pytest.mark.slow
@pytest.mark.skipif(_REASON is not None or not _has_bundled_ptxas(), reason="needs Triton's NVIDIA backend")
def test_kernels_compile_for_hopper_without_spills():
    # The interpreter accepts what the GPU compiler may reject (dot shapes, layouts) or spill: build the
    # real sm_90 binaries with the chosen tiles. ptxas sometimes trades a few registers for a few bytes of
    # spill (8 B at D = 64, M = 200): allow that much, and the measured small spill at D = 256.
    reports = _compile_reports("--shapes", "20x7,64x64,64x200,128x128,256x256")
    reports += _compile_reports("--shapes", "64x64", "--tf32", "--weight-dtype", "bf16", "--activation", "gelu")
    assert len(reports) == 12
    for report in reports:
        assert report["registers"] <= 255, report
        assert report["spill_bytes"] <= (128 if report["dim"] > 128 else 16), report


def test_config_must_cover_the_embedding_dimension():
    h, u, v, c, a = _inputs(1, 3, 20, 2, 2, seed=13)
    with pytest.raises(ValueError, match="config.block_d must cover D = 20"):
        triton_residual_stack(h.float(), u.float(), v.float(), c, a, "tanh", 1,
                              config=StackConfig(block_b=16, block_d=16, block_m=16))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_shapes_and_tiles(data):
    replicas = data.draw(st.integers(1, 3), "R")
    batch, dim, hidden = (data.draw(st.integers(1, 40), name) for name in ("B", "D", "M"))
    depth = data.draw(st.integers(1, 7), "L")
    every = data.draw(st.integers(1, 8), "every")
    activation = data.draw(st.sampled_from(ACTIVATIONS), "activation")
    block_d = max(16, triton.next_power_of_2(dim))
    config = StackConfig(block_b=data.draw(st.sampled_from([16, 32]), "block_b"), block_d=block_d,
                         block_m=data.draw(st.sampled_from([16, 32]), "block_m"))
    _compare(replicas, batch, dim, hidden, depth, every, activation, seed=data.draw(st.integers(0, 99), "seed"),
             deterministic=data.draw(st.booleans(), "deterministic"), config=config)
