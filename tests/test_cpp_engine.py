"""The C++ CPU engine against the plain per-layer reference, its operators under PyTorch's checks,
its bitwise determinism across thread counts, forward mode, and the fallback when it cannot be built.

The extension is built (or found in the cache) once per test session. The tests fail where it
cannot be built, unless DEEPRES_CPP=0 switches it off (then they are skipped).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import deepres
from deepres import ACTIVATIONS, residual_stack
from deepres.engines import cpp_build
from deepres.engines.cpp_engine import cpp_stack, cpp_stack_backward, cpp_stack_jvp
from deepres.engines.reference import reference_residual_stack
from tests.helpers import random_stack_inputs, relative_error

pytestmark = pytest.mark.skipif(os.environ.get("DEEPRES_CPP") == "0", reason="DEEPRES_CPP=0: the C++ engine is off")


@pytest.fixture(scope="module", autouse=True)
def built():
    """Build the extension once (a failure here is a test failure: CI must build it)."""
    return cpp_build.cpp_module()


def _grads(fn, h, u, v, seed=5):
    out = fn(h, u, v)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(out.dtype)
    return (out, *torch.autograd.grad((out * weight).sum(), (h, u, v)))


def _compare(h, u, v, activation, every, tolerance, c, a):
    engine = lambda h, u, v: residual_stack(h, u, v, multiplier=c, pre_scale=a, activation=activation,
                                            backend="cpp", checkpoint_every=every)
    reference = lambda h, u, v: reference_residual_stack(h, u, v, c, a, activation)
    h64, u64, v64 = (t.detach().double().requires_grad_() for t in (h, u, v))
    for name, got, want in zip(("h_L", "dh", "du", "dv"), _grads(engine, h, u, v), _grads(reference, h64, u64, v64),
                               strict=True):
        assert got.shape == want.shape and got.dtype == h.dtype
        assert relative_error(got, want) <= tolerance, (name, relative_error(got, want))


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("every", [None, 3, "sqrt", 50])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_reference(activation, every, dtype):
    depth, hidden, dim = 13, 7, 5
    h, u, v = random_stack_inputs(batch=19, dim=dim, hidden=hidden, depth=depth, replicas=2, dtype=dtype, seed=4)
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5
    _compare(h, u, v, activation, every, tolerance, c=2.0 / (depth * hidden), a=dim**-0.5)


@pytest.mark.parametrize(("batch", "dim", "hidden", "replicas"), [
    (1, 3, 1, None), (5, 17, 3, 2), (9, 4, 7, 3), (40, 8, 4, 1), (17, 16, 16, None), (3, 32, 2, 2), (8, 5, 64, 1)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_odd_and_specialized_shapes(batch, dim, hidden, replicas, dtype):
    # D ∈ {4, 8, 16, 32} take compiled specializations in float32, other D the general path;
    # B ≤ 8 runs in chunks of 8 rows, larger B in several chunks of 16 (their weight-gradient shares summed).
    depth = 6
    h, u, v = random_stack_inputs(batch=batch, dim=dim, hidden=hidden, depth=depth, replicas=replicas, dtype=dtype,
                                  seed=batch + dim)
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5
    _compare(h, u, v, "tanh", 2, tolerance, c=2.0 / (depth * hidden), a=dim**-0.5)


def test_backward_op_honours_needs():
    h, u, v = (t.detach() for t in random_stack_inputs(20, 4, 3, 7, 2, seed=6))
    out, checkpoints = cpp_stack(h, u, v, 0.1, 0.4, "silu", 3, True)
    grad = torch.randn_like(out)
    full = cpp_stack_backward(grad, h, checkpoints, u, v, 0.1, 0.4, "silu", 3, [True, True, True])
    for needs in ([False, True, False], [True, False, False], [False, False, True]):
        part = cpp_stack_backward(grad, h, checkpoints, u, v, 0.1, 0.4, "silu", 3, needs)
        for need, got, want in zip(needs, part, full, strict=True):
            assert torch.equal(got, want) if need else got.numel() == 0


@pytest.mark.parametrize("threads", [2, 3, 4])
def test_bitwise_identical_across_thread_counts(threads):
    h, u, v = random_stack_inputs(40, 8, 5, 9, 3, dtype=torch.float32, seed=7)  # 3 chunks per replica
    run = lambda: _grads(lambda h, u, v: residual_stack(h, u, v, multiplier=0.05, pre_scale=0.3, backend="cpp",
                                                        checkpoint_every=4), h, u, v)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = run()
        torch.set_num_threads(threads)
        several, again = run(), run()
    finally:
        torch.set_num_threads(before)
    for a, b, c in zip(single, several, again, strict=True):
        assert torch.equal(a, b) and torch.equal(b, c)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_recompute_changes_no_bit(activation, dtype):
    # The backward recomputes a segment from its checkpoint; with k > 1 it keeps the recompute's σ(z)
    # and σ'(z) (where they fit in cache) instead of evaluating them again on the way back. Either way
    # the sums are the ones of k = 1 (no recompute), bit for bit, on every activation.
    h, u, v = random_stack_inputs(20, 4, 5, 12, 2, dtype=dtype, seed=13)  # 2 chunks per replica
    grads = {every: _grads(lambda h, u, v, every=every: residual_stack(
        h, u, v, multiplier=0.1, pre_scale=0.5, activation=activation, backend="cpp", checkpoint_every=every),
        h, u, v) for every in (1, 3, 5, 12)}
    for every in (3, 5, 12):
        for got, want in zip(grads[every], grads[1], strict=True):
            assert torch.equal(got, want), every


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_row_groups_change_no_bit_of_the_forward_or_the_jvp(threads):
    # 300 rows are 19 chunks of 16: one thread walks them in groups of 16 and 3, several threads split
    # a replica's chunks further. Rows do not interact, so every grouping gives the same bits: the
    # results match the reference (float64), and slices of the batch (other groups, rows in other lanes).
    h, u, v = (t.detach() for t in random_stack_inputs(300, 8, 5, 6, 1, dtype=torch.float64, seed=12))
    tangents = tuple(torch.randn_like(t) for t in (h, u, v))
    c, a = 0.3, 0.4
    want = torch.func.jvp(lambda h, u, v: reference_residual_stack(h, u, v, c, a, "tanh"), (h, u, v), tangents)
    h32, u32, v32, hd32, ud32, vd32 = (t.float() for t in (h, u, v, *tangents))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        out = cpp_stack(h, u, v, c, a, "tanh", 2, True)[0]
        got = cpp_stack_jvp(h, u, v, *tangents, c, a, "tanh")
        out32 = cpp_stack(h32, u32, v32, c, a, "tanh", 2, True)
        jvp32 = cpp_stack_jvp(h32, u32, v32, hd32, ud32, vd32, c, a, "tanh")
    finally:
        torch.set_num_threads(before)
    assert relative_error(out, want[0]) <= 1e-12 and relative_error(got[1], want[1]) <= 1e-12
    assert torch.equal(got[0], out) and torch.equal(jvp32[0], out32[0])  # the jvp's primal is the forward's
    for rows in (slice(0, 16), slice(16, 48), slice(240, 300), slice(285, 300), slice(3, 290)):
        part = cpp_stack(h32[:, rows], u32, v32, c, a, "tanh", 2, True)
        part_jvp = cpp_stack_jvp(h32[:, rows], u32, v32, hd32[:, rows], ud32, vd32, c, a, "tanh")
        assert torch.equal(out32[0][:, rows], part[0]) and torch.equal(out32[1][:, :, rows], part[1])
        assert torch.equal(jvp32[1][:, rows], part_jvp[1])


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_jvp_matches_forward_mode_of_the_reference(activation):
    h, u, v = (t.detach() for t in random_stack_inputs(11, 5, 3, 8, 2, seed=8))
    tangents = tuple(torch.randn_like(t) for t in (h, u, v))
    c, a = 0.2, 0.45
    want = torch.func.jvp(lambda h, u, v: reference_residual_stack(h, u, v, c, a, activation), (h, u, v), tangents)
    got = cpp_stack_jvp(h, u, v, *tangents, c, a, activation)
    assert relative_error(got[0], want[0]) <= 1e-12 and relative_error(got[1], want[1]) <= 1e-12
    got32 = cpp_stack_jvp(*(t.float() for t in (h, u, v, *tangents)), c, a, activation)
    assert relative_error(got32[0], want[0]) <= 1e-5 and relative_error(got32[1], want[1]) <= 1e-5


ALL = {"test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic"}


def _passes(op, args):
    result = torch.library.opcheck(op, args)
    assert set(result) == ALL and set(result.values()) == {"SUCCESS"}, result


@pytest.mark.parametrize(("replicas", "batch", "dim", "hidden", "depth", "every", "dtype"), [
    (1, 3, 5, 7, 9, 1, torch.float64), (3, 1, 4, 2, 7, 3, torch.float64), (2, 17, 3, 6, 11, 11, torch.float32)])
def test_operators_pass_opcheck(replicas, batch, dim, hidden, depth, every, dtype):
    h, u, v = (t.detach().to(dtype) for t in random_stack_inputs(batch, dim, hidden, depth, replicas, seed=depth))
    _passes(cpp_stack, (h.requires_grad_(), u.requires_grad_(), v.requires_grad_(), 0.3 / (depth * hidden),
                        dim**-0.5, "tanh", every, True))
    out, checkpoints = cpp_stack(h.detach(), u.detach(), v.detach(), 0.1, 0.4, "gelu", every, True)
    for needs in ([True, True, True], [False, True, False]):
        _passes(cpp_stack_backward, (torch.randn_like(out), h.detach(), checkpoints, u.detach(), v.detach(), 0.1,
                                     0.4, "gelu", every, needs))
    tangents = tuple(torch.randn_like(t) for t in (h, u, v))
    _passes(cpp_stack_jvp, (h.detach(), u.detach(), v.detach(), *tangents, 0.1, 0.4, "relu"))
    _passes(cpp_stack, (h.detach(), u.detach(), v.detach(), 0.1, 0.5, "relu", every, False))


def test_auto_picks_cpp_on_cpu_and_torch_for_half_weights():
    h, u = torch.zeros(2, 3), torch.zeros(4, 5, 3)
    assert deepres.functional.select_engine("auto", h, u) == "cpp"
    assert deepres.functional.select_engine("auto", h.double(), u.double()) == "cpp"
    assert deepres.functional.select_engine("auto", h, u.bfloat16()) == "torch"
    with pytest.raises(ValueError, match="bfloat16 weights"):
        deepres.functional.select_engine("cpp", h, u.bfloat16())


def test_compile_fullgraph_and_export():
    h, u, v = (t.detach().float() for t in random_stack_inputs(6, 4, 3, 9, 2, seed=9))

    def model(h, u, v):
        return residual_stack(h, u, v, multiplier=0.1, pre_scale=0.5, backend="cpp", checkpoint_every="sqrt")

    torch._dynamo.reset()
    args = [t.clone().requires_grad_() for t in (h, u, v)]
    expected = _grads(model, *args)
    got = _grads(torch.compile(model, backend="aot_eager", fullgraph=True), *args)
    for a, b in zip(got, expected, strict=True):
        assert relative_error(a, b) <= 1e-6

    class Stack(torch.nn.Module):
        def forward(self, h, u, v):
            return model(h, u, v)

    exported = torch.export.export(Stack(), (h, u, v))
    assert "deepres.cpp_stack" in str(exported.graph)
    assert relative_error(exported.module()(h, u, v), model(h, u, v)) <= 1e-7


def test_autocast_keeps_the_float32_stream():
    h, u, v = (t.detach().float().requires_grad_() for t in random_stack_inputs(7, 4, 3, 5, seed=10))
    plain = _grads(lambda h, u, v: residual_stack(h, u, v, multiplier=0.2, pre_scale=0.5, backend="cpp"), h, u, v)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = _grads(lambda h, u, v: residual_stack(h, u, v, multiplier=0.2, pre_scale=0.5, backend="cpp"), h, u, v)
    for a, b in zip(cast, plain, strict=True):
        assert a.dtype == torch.float32 and torch.equal(a, b)


def test_gradcheck_and_second_order_float64():
    h, u, v = random_stack_inputs(3, 4, 3, 5, 2, seed=11)
    fn = lambda h, u, v: residual_stack(h, u, v, multiplier=0.3, pre_scale=0.6, activation="silu", backend="cpp",
                                        checkpoint_every=2)
    assert torch.autograd.gradcheck(fn, (h, u, v))
    assert torch.autograd.gradgradcheck(fn, (h, u, v))


# --- Without a build ------------------------------------------------------------------------------------


def test_failed_build_warns_once_under_auto_and_refuses_cpp(monkeypatch):
    reason = "RuntimeError: no C++ compiler: '/nonexistent/c++' is not on PATH (set CXX to one)"
    monkeypatch.setattr(cpp_build, "_load", lambda: (None, reason))
    monkeypatch.setattr(cpp_build, "_warned", False)
    h, u, v = random_stack_inputs(4, 3, 2, 5, seed=12)
    with pytest.warns(UserWarning, match="C\\+\\+ CPU engine is not available") as record:
        out = residual_stack(h, u, v, multiplier=0.1)
        residual_stack(h, u, v, multiplier=0.1)
    assert len([w for w in record if "C++ CPU engine" in str(w.message)]) == 1
    assert torch.equal(out, residual_stack(h, u, v, multiplier=0.1, backend="torch"))
    with pytest.raises(ValueError, match="backend='cpp' cannot run here: .*no C\\+\\+ compiler"):
        residual_stack(h, u, v, multiplier=0.1, backend="cpp")


def test_build_without_a_compiler_is_one_clear_line(tmp_path):
    env = dict(os.environ, CXX=str(tmp_path / "no-such-compiler"), TORCH_EXTENSIONS_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-m", "deepres.engines.prebuild_cpp"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"deepres: the C++ CPU engine could not be built: RuntimeError: no C++ compiler: "
        f"'{tmp_path / 'no-such-compiler'}' is not on PATH (set CXX to one)"]


def test_import_does_not_build():
    code = ("import deepres, deepres.engines.cpp_build as b; "
            "assert b._load.cache_info().currsize == 0, 'built at import'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_cpu_engine_benchmark_reports_ratios_and_peak_share():
    from deepres.benchmark.cpu_engine import run

    result = run(["study-L16-M1"], [1], repeats=1, clock="thread")
    (row,) = result["results"]
    assert row["flops_per_step"] == 16 * 512 * 16 * 10 * 1 * 4
    assert set(row["median_s"]) == set(row["percent_of_gemm_peak"]) == {"cpp", "torch", "eager"}
    assert row["cpp_vs_torch"] == row["median_s"]["torch"] / row["median_s"]["cpp"]
    assert result["gemm_peak_gflops_1_thread"] > 0
    with pytest.raises(ValueError, match="one thread only"):
        run(["study-L16-M1"], [2], repeats=1, clock="thread")
