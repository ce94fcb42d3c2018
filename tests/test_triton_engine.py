"""The Triton engine and its kernels against the PyTorch engine.

Without CUDA these run in Triton's interpreter (conftest.py sets
``TRITON_INTERPRET=1``), with tiny odd shapes that still reach every variant
of the launchers' plans: one and several batch tiles (in-kernel and GEMM
weight gradients, segments cut into chunks), one and several hidden tiles,
replicas, every activation, every precision. The tests marked ``gpu``
(``pytest -m gpu``) need a CUDA device and are skipped without one. The
references run in float64 on the same values, so the float32 kernels are held
to the exact answer (relative error ≤ 1e-5). Every call runs with PyTorch's
uninitialized-memory filling on, so an output element that a kernel forgets
to write is NaN and fails the comparison.
"""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deepres import ACTIVATIONS, residual_stack
from deepres.engines.torch_engine import torch_residual_stack
from deepres.engines.triton.support import unavailable_reason
from tests.helpers import random_stack_inputs, relative_error

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
_REASON = unavailable_reason(DEVICE)
pytestmark = pytest.mark.skipif(_REASON is not None, reason=f"Triton backend unavailable: {_REASON}")


def gpu(test):
    """A GPU test: ``pytest -m gpu`` selects it; it is skipped without CUDA."""
    return pytest.mark.gpu(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")(test))


if _REASON is None:
    import triton
    import triton.language as tl
    from deepres.kernels.activations import activation_and_derivative
    from deepres.kernels.dot import split_tf32
    from deepres.kernels.plan import (
        DEFAULT_PRECISION,
        DTYPES,
        MAX_FUSED_DIM,
        StackConfig,
        backward_plan,
        backward_workspace,
        dtype_name,
    )

    from deepres.engines.triton.launch import default_config, stack_backward, stack_forward
    from deepres.engines.triton.op import triton_residual_stack, triton_stack

    @triton.jit
    def _activation_kernel(z_ptr, s_ptr, ds_ptr, N, ACT: tl.constexpr, BLOCK: tl.constexpr):
        offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offsets < N
        s, ds = activation_and_derivative(tl.load(z_ptr + offsets, mask=mask, other=0.0), ACT)
        tl.store(s_ptr + offsets, s, mask=mask)
        tl.store(ds_ptr + offsets, ds, mask=mask)

    @triton.jit
    def _split_kernel(x_ptr, hi_ptr, lo_ptr, N, BLOCK: tl.constexpr):
        offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offsets < N
        hi, lo = split_tf32(tl.load(x_ptr + offsets, mask=mask, other=0.0))
        tl.store(hi_ptr + offsets, hi, mask=mask)
        tl.store(lo_ptr + offsets, lo, mask=mask)


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
             weight_dtype=torch.float32, precision="tf32x3", config=None):
    """Triton (float32 h) vs the PyTorch engine in float64 on the same values: h_L, ∂h_0, ∂u, ∂v."""
    h, u, v, c, a = _inputs(replicas, batch, dim, hidden, depth, seed)
    with torch.no_grad():  # the reference sees exactly the (rounded) weights the kernels see
        u.copy_(u.to(weight_dtype).double())
        v.copy_(v.to(weight_dtype).double())
    triton_args = [h.detach().float(), u.detach().to(weight_dtype), v.detach().to(weight_dtype)]
    triton_args = [t.to(DEVICE).requires_grad_() for t in triton_args]
    fused = lambda h, u, v: triton_residual_stack(h, u, v, c, a, activation, every, precision, config=config)
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


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_gemm_weight_gradients_every_activation(activation):
    # 3 batch tiles: the walk stores s, p, g and the weight gradients are GEMMs over the batch;
    # 2 hidden tiles (M = 20, BLOCK_M = 16), D padded 20 → 32, L = 4 not a multiple of every = 3.
    config = StackConfig(block_b=16, block_d=32, block_m=16)
    _compare(2, 37, 20, 20, 4, 3, activation, seed=3, config=config)


@pytest.mark.parametrize(("depth", "every", "walks"), [(20, 20, [(10, 20), (0, 10)]), (20, 1, [(10, 20), (0, 10)])])
def test_gemm_segments_are_cut_into_chunks(depth, every, walks):
    # The GEMM workspace is too small for a whole segment here: a segment of 20 layers is walked (and its
    # weight gradients formed) in two chunks; with every = 1 nothing is recomputed and chunks span segments.
    config = StackConfig(block_b=16, block_d=16, block_m=16)
    plan = backward_plan(1, 40, 9, 11, depth, every, need_weights=True, precision="tf32x3", weight_dtype="fp32",
                         activation="silu", config=config)
    assert [launch.kernel for launch in plan] == ["stack_backward", "weight_grad"] * len(walks)
    assert [(dict(launch.scalars)["lo"], dict(launch.scalars)["hi"]) for launch in plan[::2]] == walks
    _compare(1, 40, 9, 11, depth, every, "silu", seed=14, config=config)


@pytest.mark.parametrize("save", [True, False])
def test_every_launch_carries_all_its_kernels_scalars(save):
    # The launcher passes each launch's own scalars by name through the one table KERNELS: every
    # runtime scalar a kernel takes is in its launch, and nothing else is.
    from deepres.kernels.plan import forward_plan

    from deepres.engines.triton.launch import KERNELS

    config = StackConfig(block_b=16, block_d=16, block_m=16)
    options = {"precision": "tf32x3", "weight_dtype": "fp32", "activation": "tanh", "config": config,
               "multiplier": 0.25, "pre_scale": 0.75}
    launches = (forward_plan(1, 40, 9, 11, 20, 20, save_checkpoints=save, **options)
                + backward_plan(1, 40, 9, 11, 20, 1 if save else 20, need_weights=save, **options))
    assert {launch.kernel for launch in launches} == ({"stack_forward", "stack_backward", "weight_grad"} if save
                                                      else {"stack_forward", "stack_backward"})
    for launch in launches:
        kernel = KERNELS[launch.kernel]
        wanted = {name for name in kernel.arg_names if not name.endswith("_ptr")} - set(launch.options)
        assert set(dict(launch.scalars)) == wanted, launch.kernel
        assert dict(launch.scalars)["c"] == 0.25 and dict(launch.scalars)["a"] == 0.75


def test_weight_gradients_are_bitwise_reproducible():
    config = StackConfig(block_b=16, block_d=16, block_m=16)
    first = _compare(1, 40, 9, 11, 3, 2, "silu", seed=4, config=config)
    second = _compare(1, 40, 9, 11, 3, 2, "silu", seed=4, config=config)
    for x, y in zip(first, second, strict=True):
        assert torch.equal(x, y)


def _compare_launchers(replicas, batch, dim, hidden, depth, every, activation, *, precision, seed, tolerance=1e-5,
                       config=None, weight_dtype=torch.float32):
    """The launchers (no autograd) at an explicit precision against the float64 PyTorch engine."""
    h, u, v, c, a = _inputs(replicas, batch, dim, hidden, depth, seed)
    with torch.no_grad():
        u.copy_(u.to(weight_dtype).double())
        v.copy_(v.to(weight_dtype).double())
    probe = torch.randn(h.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    ref = torch_residual_stack(h, u, v, c, a, activation, every)
    want = (ref.detach(), *torch.autograd.grad((ref * probe).sum(), (h, u, v)))
    h32, u32, v32 = (t.detach().to(DEVICE, dtype) for t, dtype in ((h, torch.float32), (u, weight_dtype),
                                                                   (v, weight_dtype)))
    options = {"precision": precision, "weight_dtype": dtype_name(weight_dtype)}
    forward, backward = ((config or default_config(batch, dim, hidden, replicas or 1, DEVICE, backward=pass_,
                                                   **options)) for pass_ in (False, True))
    out, ckpt = stack_forward(h32, u32, v32, c, a, activation, every, save_checkpoints=True, config=forward,
                              **options)
    grads = stack_backward(probe.float().to(DEVICE), ckpt, u32, v32, c, a, activation, every, need_weights=True,
                           config=backward, **options)
    for name, x, y in zip(("h_L", "dh", "du", "dv"), (out, *grads), want, strict=True):
        assert x.dtype == torch.float32 and x.shape == y.shape, name
        assert relative_error(x.cpu(), y) <= tolerance, (name, precision, relative_error(x.cpu(), y))


_TILES = StackConfig(block_b=32, block_d=16, block_m=16)


@pytest.mark.parametrize("precision", ["ieee", "tf32x3"])
def test_launchers_at_float32_precisions(precision):
    # One batch tile (in-kernel weight gradients) and three (GEMM), 2 hidden tiles, replicas.
    _compare_launchers(2, 7, 6, 20, 5, 2, "tanh", precision=precision, seed=30,
                       config=StackConfig(block_b=16, block_d=16, block_m=16))
    _compare_launchers(2, 35, 6, 20, 5, 2, "gelu", precision=precision, seed=31,
                       config=StackConfig(block_b=16, block_d=16, block_m=16))


def test_launchers_tf32_is_accepted():
    # The interpreter computes TF32 dots in float32, so only the path is checked here (GPU: 1e-2 below).
    _compare_launchers(1, 20, 6, 7, 3, 2, "relu", precision="tf32", seed=32, tolerance=1e-2, config=_TILES)


def test_split_tf32_is_exact_and_hi_fits_tf32():
    x = torch.cat([torch.randn(1000, generator=torch.Generator().manual_seed(33)) * 10.0 ** k for k in (-30, 0, 30)])
    x = x.to(DEVICE)
    hi, lo = torch.empty_like(x), torch.empty_like(x)
    _split_kernel[(triton.cdiv(x.numel(), 1024),)](x, hi, lo, x.numel(), BLOCK=1024)
    assert torch.equal(hi + lo, x)  # exact in float32
    assert torch.all(hi.view(torch.int32) & 8191 == 0)  # 10 explicit mantissa bits: a TF32 value
    assert torch.all(lo.abs() <= hi.abs() * 2.0**-10)


def test_backward_allocates_what_the_plan_says(monkeypatch):
    # The launcher's buffers are exactly backward_workspace (the memory tests count that) plus its outputs.
    import sys

    import deepres.engines.triton.launch as launch_module

    shapes = []
    real_empty = torch.Tensor.new_empty

    def counting_new_empty(self, size, *args, **kwargs):
        # Only the launcher's own allocations (Triton's interpreter allocates too).
        if sys._getframe(1).f_globals.get("__name__") == launch_module.__name__:
            shapes.append((tuple(size), kwargs.get("dtype", self.dtype)))
        return real_empty(self, size, *args, **kwargs)

    h, u, v, c, a = _inputs(1, 40, 9, 11, 6, seed=34)
    config = StackConfig(block_b=16, block_d=16, block_m=16)
    h32, u32, v32 = (t.detach().float().to(DEVICE) for t in (h, u, v))
    options = {"precision": DEFAULT_PRECISION, "weight_dtype": "fp32", "config": config}
    _, ckpt = stack_forward(h32, u32, v32, c, a, "tanh", 3, save_checkpoints=True, **options)
    monkeypatch.setattr(torch.Tensor, "new_empty", counting_new_empty)
    launch_module.stack_backward(torch.ones_like(h32), ckpt, u32, v32, c, a, "tanh", 3, need_weights=True, **options)
    planned = [(shape, DTYPES[kind]) for shape, kind in backward_workspace(
        1, 40, 9, 11, 6, 3, need_weights=True, block_b=16).values()]
    assert sorted(map(str, shapes)) == sorted(map(str, planned))
    assert {"scratch", "s", "p", "g"} == set(backward_workspace(1, 40, 9, 11, 6, 3, need_weights=True, block_b=16))


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
    for precision, tiles in (("tf32x3", None), ("ieee", [32, 16, 16, 4, 3])):
        result = torch.library.opcheck(triton_stack, (h, u, v, c, a, "tanh", 2, True, precision, "fp32", tiles),
                                       test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
        assert set(result.values()) == {"SUCCESS"}


@gpu
def test_gpu_bfloat16_weights():
    _compare(2, 100, 64, 48, 32, 6, "tanh", seed=20, weight_dtype=torch.bfloat16)


@gpu
def test_gpu_tf32_is_close_but_not_exact():
    _compare(1, 200, 64, 64, 32, 8, "gelu", seed=21, precision="tf32", tolerance=1e-2)


@gpu
@pytest.mark.parametrize(("dim", "hidden"), [(256, 256), (128, 200), (33, 500)])
def test_gpu_large_shapes(dim, hidden):
    _compare(2, 300, dim, hidden, 64, 8, "silu", seed=22)


@gpu
@pytest.mark.parametrize("precision", ["ieee", "tf32x3"])
def test_gpu_float32_precisions_are_float32_accurate_at_depth_4096(precision):
    _compare_launchers(1, 256, 64, 64, 4096, 64, "tanh", precision=precision, seed=25)


@gpu
def test_gpu_deterministic_many_tiles_reproducible():
    first = _compare(1, 2048, 64, 64, 16, 4, "tanh", seed=23)
    second = _compare(1, 2048, 64, 64, 16, 4, "tanh", seed=23)
    for x, y in zip(first, second, strict=True):
        assert torch.equal(x, y)


def test_unknown_or_unfit_precisions_are_refused():
    h, u, v, c, a = _inputs(None, 3, 5, 2, 2, seed=14)
    h, u, v = (t.float().to(DEVICE) for t in (h, u, v))
    with pytest.raises(ValueError, match="precision must be one of .*got 'fp64'"):
        residual_stack(h, u, v, multiplier=c, backend="triton", precision="fp64")
    with pytest.raises(ValueError, match="precision='ieee' takes float32 weights"):
        residual_stack(h, u.half(), v.half(), multiplier=c, backend="triton", precision="ieee")
    with pytest.raises(ValueError, match="precision='ieee' takes float32 weights"):
        triton_residual_stack(h[None], u.half()[None], v.half()[None], c, a, "tanh", 1, "ieee")


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
             precision=data.draw(st.sampled_from(["ieee", "tf32x3"]), "precision"), config=config)
