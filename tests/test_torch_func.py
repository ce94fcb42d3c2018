"""torch.func through every deepres op: forward mode (jvp, jacfwd, dual tensors), reverse mode
(grad, vjp, jacrev, hessian), their compositions, and vmap with batching rules, against the plain
per-layer reference on fresh random float64 inputs, for every engine (Triton in its interpreter on
the CPU), every activation, with and without replicas; the modules through ``functional_call``;
the new custom ops under opcheck; and no use of PyTorch's per-example vmap fallback."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch.func import functional_call, grad, hessian, jacfwd, jacrev, jvp, vjp, vmap

import deepres
from deepres import ACTIVATIONS
from deepres.engines.reference import reference_residual_stack
from deepres.engines.registry import unavailable_reason
from deepres.engines.torch_jvp import torch_stack_jvp
from deepres.engines.transforms import StackOps, stack_apply
from deepres.meanode.reference import reference_solve
from deepres.meanode.tangent import meanode_solve_jvp
from tests.helpers import random_stack_inputs, relative_error

F64 = torch.float64
ALL_OPCHECKS = {"test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic"}
_TRITON = unavailable_reason("triton", torch.device("cpu"))


def _problem(replicas, *, batch=3, dim=4, hidden=3, depth=5, seed=0):
    h, u, v = (t.detach() for t in random_stack_inputs(batch, dim, hidden, depth, replicas, seed=seed))
    c, a = 1.5 / (depth * hidden), dim**-0.5
    return h, u, v, c, a


def _stacks(c, a, activation, backend, every=2):
    def engine(h, u, v):
        return deepres.residual_stack(h, u, v, multiplier=c, pre_scale=a, activation=activation, backend=backend,
                                      checkpoint_every=every)

    def reference(h, u, v):
        return reference_residual_stack(h, u, v, c, a, activation)

    return engine, reference


def _loss(f):
    return lambda h, u, v: (f(h, u, v).sin() * 0.5).sum()


def _close(got, want, tol=1e-12):
    if isinstance(want, (tuple, list)):
        for g, w in zip(got, want, strict=True):
            _close(g, w, tol)
        return
    assert relative_error(got, want) <= tol


@pytest.mark.parametrize("backend", ["torch", "cpp"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("replicas", [None, 2])
def test_gradcheck_forward_and_batched(activation, replicas, backend):
    h, u, v, c, a = _problem(replicas, batch=2, dim=3, hidden=2, depth=3, seed=len(activation))
    engine, _ = _stacks(c, a, activation, backend)
    inputs = tuple(t.clone().requires_grad_() for t in (h, u, v))
    assert torch.autograd.gradcheck(engine, inputs, check_forward_ad=True, check_batched_grad=True,
                                    check_batched_forward_grad=True)


@pytest.mark.parametrize(("activation", "backend"), [*((name, "auto") for name in ACTIVATIONS),
                                                     ("tanh", "torch"), ("silu", "reference"),
                                                     ("tanh", "cpp"), ("gelu", "cpp")])
def test_every_transform_matches_the_reference(activation, backend):
    h, u, v, c, a = _problem(2, seed=7 + len(activation))
    engine, reference = _stacks(c, a, activation, backend)
    tangents = tuple(torch.randn_like(t) for t in (h, u, v))
    _close(jvp(engine, (h, u, v), tangents), jvp(reference, (h, u, v), tangents))
    _close(jacfwd(engine, argnums=(0, 1, 2))(h, u, v), jacfwd(reference, argnums=(0, 1, 2))(h, u, v))
    _close(jacrev(engine, argnums=(0, 2))(h, u, v), jacrev(reference, argnums=(0, 2))(h, u, v))
    _close(grad(_loss(engine), argnums=(0, 1, 2))(h, u, v), grad(_loss(reference), argnums=(0, 1, 2))(h, u, v))
    out, pullback = vjp(engine, h, u, v)
    cotangent = torch.randn_like(out)
    want_out, want_pullback = vjp(reference, h, u, v)
    _close((out, *pullback(cotangent)), (want_out, *want_pullback(cotangent)))
    _close(hessian(_loss(engine), argnums=1)(h, u, v), hessian(_loss(reference), argnums=1)(h, u, v))
    _close(jvp(grad(_loss(engine), argnums=1), (h, u, v), tangents)[1],
           jvp(grad(_loss(reference), argnums=1), (h, u, v), tangents)[1])
    _close(grad(lambda *p: jvp(engine, p, tangents)[1].pow(2).sum(), argnums=(0, 1, 2))(h, u, v),
           grad(lambda *p: jvp(reference, p, tangents)[1].pow(2).sum(), argnums=(0, 1, 2))(h, u, v))


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_forward_ad_dual_tensors_and_none_tangents(backend):
    h, u, v, c, a = _problem(None, seed=3)
    engine, reference = _stacks(c, a, "gelu", backend, every=1)
    h_dot, v_dot = torch.randn_like(h), torch.randn_like(v)
    want = jvp(reference, (h, u, v), (h_dot, torch.zeros_like(u), v_dot))[1]
    with fwAD.dual_level():
        out = engine(fwAD.make_dual(h, h_dot), u, fwAD.make_dual(v, v_dot))
        tangent = fwAD.unpack_dual(out).tangent
    assert tangent is not None
    _close(tangent, want)
    # The op itself with None tangents: those terms are skipped, not read.
    hr, ur, vr = h.unsqueeze(0), u.unsqueeze(0), v.unsqueeze(0)
    out, out_dot = torch_stack_jvp(hr, ur, vr, None, None, vr.new_ones(vr.shape), c, a, "tanh")
    want_out, want_dot = jvp(lambda vv: reference_residual_stack(hr, ur, vv, c, a, "tanh"), (vr,),
                             (vr.new_ones(vr.shape),))
    _close((out, out_dot), (want_out, want_dot))


@pytest.mark.parametrize("replicas", [None, 2])
def test_vmap_matches_a_python_loop(replicas):
    h, u, v, c, a = _problem(replicas, seed=11)
    engine, reference = _stacks(c, a, "silu", "torch")
    n = 4
    hs, us, vs = (torch.randn(n, *t.shape, dtype=F64) for t in (h, u, v))
    _close(vmap(engine, (0, None, None))(hs, u, v), torch.stack([reference(x, u, v) for x in hs]))
    _close(vmap(engine, (0, 0, 0))(hs, us, vs), torch.stack([reference(*t) for t in zip(hs, us, vs, strict=True)]))
    _close(vmap(engine, (None, 1, None), out_dims=1)(h, us.movedim(0, 1), v),
           torch.stack([reference(h, x, v) for x in us], 1))
    got = vmap(grad(_loss(engine), argnums=(0, 1, 2)), (0, None, None))(hs, u, v)
    want = [grad(_loss(reference), argnums=(0, 1, 2))(x, u, v) for x in hs]
    _close(got, [torch.stack(parts) for parts in zip(*want, strict=True)])
    got = vmap(grad(_loss(engine)), (0, None, None))(hs, u, v)  # ∂h only: rows folded into B
    _close(got, torch.stack([grad(_loss(reference))(x, u, v) for x in hs]))
    tangents = torch.randn(n, *u.shape, dtype=F64)
    got = vmap(lambda t: jvp(engine, (h, u, v), (torch.zeros_like(h), t, torch.zeros_like(v)))[1])(tangents)
    _close(got, torch.stack([jvp(reference, (h, u, v), (torch.zeros_like(h), t, torch.zeros_like(v)))[1]
                             for t in tangents]))


def test_second_order_stays_exact_with_create_graph():
    h, u, v, c, a = _problem(2, seed=5)
    engine, reference = _stacks(c, a, "tanh", "torch", every=3)
    results = []
    for f in (engine, reference):
        leaves = [t.clone().requires_grad_() for t in (h, u, v)]
        first = torch.autograd.grad(_loss(f)(*leaves), leaves, create_graph=True)
        second = torch.autograd.grad(sum((g * g).sum() for g in first), leaves)
        results.append((*first, *second))
    _close(results[0], results[1])


def test_an_engine_without_forward_mode_names_the_alternative():
    from deepres.engines.torch_engine import TORCH_OPS

    ops = StackOps("test", TORCH_OPS.forward, TORCH_OPS.backward, None, no_jvp="backend='reference'")
    h, u, v, c, a = _problem(1, seed=2)
    with pytest.raises(RuntimeError, match="no forward-mode rule.*backend='reference'"):
        jvp(lambda hh: stack_apply(ops, hh, u, v, c, a, "tanh", 1), (h,), (torch.ones_like(h),))
    grads = grad(lambda hh: stack_apply(ops, hh, u, v, c, a, "tanh", 1).sum())(h)  # reverse mode works
    _close(grads, grad(lambda hh: reference_residual_stack(hh, u, v, c, a, "tanh").sum())(h))


def test_new_ops_pass_opcheck():
    h, u, v, c, a = _problem(2, seed=9)
    tangents = [torch.randn_like(t) for t in (h, u, v)]
    for args in ((h, u, v, *tangents), (h, u, v, None, tangents[1], None)):
        args = [t.requires_grad_() if t is not None else None for t in (x.clone() if x is not None else None
                                                                         for x in args)]
        result = torch.library.opcheck(torch_stack_jvp, (*args, c, a, "tanh"))
        assert set(result) == ALL_OPCHECKS and set(result.values()) == {"SUCCESS"}, result
    ode = deepres.MeanODE(3, 4, 2, solver="midpoint", particle_init="iid", dtype=F64)
    h0 = torch.randn(3, 3, dtype=F64, requires_grad=True)
    uu, vv = ode.u.detach().requires_grad_(), ode.v.detach().requires_grad_()
    result = torch.library.opcheck(meanode_solve_jvp, (h0, uu, vv, torch.randn_like(h0), None, torch.randn_like(vv),
                                                       "midpoint", 2, ode.field_multiplier, ode.pre_scale, "silu"))
    assert set(result) == ALL_OPCHECKS and set(result.values()) == {"SUCCESS"}, result


@pytest.mark.parametrize("solver", ["euler", "midpoint", "rk4"])
def test_meanode_transforms_match_the_reference_solve(solver):
    ode = deepres.MeanODE(3, 4, 3, solver=solver, gradient="discrete", particle_init="iid", dtype=F64,
                          checkpoint_every=2, generator=torch.Generator().manual_seed(len(solver)))
    h = torch.randn(4, 3, dtype=F64)
    u, v = ode.u.detach().clone(), ode.v.detach().clone()

    def solve(hh, uu, vv):
        return functional_call(ode, {"u": uu, "v": vv}, (hh,))

    def reference(hh, uu, vv):
        return reference_solve(hh, uu, vv, ode.field_multiplier, ode.pre_scale, "tanh", solver)

    tangents = tuple(torch.randn_like(t) for t in (h, u, v))
    _close(jvp(solve, (h, u, v), tangents), jvp(reference, (h, u, v), tangents))
    _close(jacfwd(solve, argnums=(0, 2))(h, u, v), jacfwd(reference, argnums=(0, 2))(h, u, v))
    _close(jacrev(solve, argnums=1)(h, u, v), jacrev(reference, argnums=1)(h, u, v))
    _close(grad(_loss(solve), argnums=(0, 1, 2))(h, u, v), grad(_loss(reference), argnums=(0, 1, 2))(h, u, v))
    _close(hessian(_loss(solve))(h, u, v), hessian(_loss(reference))(h, u, v))
    _close(jvp(grad(_loss(solve), argnums=2), (h, u, v), tangents)[1],
           jvp(grad(_loss(reference), argnums=2), (h, u, v), tangents)[1])
    hs = torch.randn(3, *h.shape, dtype=F64)
    _close(vmap(solve, (0, None, None))(hs, u, v), torch.stack([reference(x, u, v) for x in hs]))
    _close(vmap(grad(_loss(solve), argnums=(0, 1)), (0, None, None))(hs, u, v),
           [torch.stack(p) for p in zip(*[grad(_loss(reference), argnums=(0, 1))(x, u, v) for x in hs],
                                         strict=True)])
    with fwAD.dual_level():
        out = solve(fwAD.make_dual(h, tangents[0]), u, v)
        tangent = fwAD.unpack_dual(out).tangent
    _close(tangent, jvp(reference, (h, u, v), (tangents[0], torch.zeros_like(u), torch.zeros_like(v)))[1])
    leaves = [t.clone().requires_grad_() for t in (h, u, v)]
    assert torch.autograd.gradcheck(solve, leaves, check_forward_ad=True, check_batched_grad=True)


def test_meanode_adjoint_first_order_matches_autograd_and_second_order_names_the_alternative():
    ode = deepres.MeanODE(3, 4, 3, solver="rk4", gradient="adjoint", particle_init="iid", dtype=F64,
                          checkpoint_every="backsolve", generator=torch.Generator().manual_seed(1))
    h = torch.randn(4, 3, dtype=F64)
    params = {"u": ode.u.detach(), "v": ode.v.detach()}

    def loss(hh, p):
        return functional_call(ode, p, (hh,)).sin().sum()

    got = grad(loss, argnums=(0, 1))(h, params)
    leaf = h.clone().requires_grad_()
    ode(leaf).sin().sum().backward()
    _close((got[0], got[1]["u"], got[1]["v"]), (leaf.grad, ode.u.grad, ode.v.grad), tol=0.0)
    with pytest.raises(RuntimeError, match="not twice differentiable.*gradient='discrete'"):
        hessian(loss)(h, params)


def test_modules_through_functional_call():
    net = deepres.DeepResNet(3, 2, depth=4, dim=4, hidden=2, replicas=2, backend="torch", checkpoint_every=3,
                             dtype=F64, generator=torch.Generator().manual_seed(4))
    limit = deepres.MeanODENet(3, 2, dim=4, particles=4, steps=2, gradient="discrete", dtype=F64,
                               generator=torch.Generator().manual_seed(5))
    x = torch.randn(5, 3, dtype=F64)
    for model in (net, limit):
        params = {k: p.detach() for k, p in model.named_parameters()}
        names = list(params)

        def f(*values, model=model, names=names):
            return functional_call(model, dict(zip(names, values, strict=True)), (x,))

        values = tuple(params.values())
        tangents = tuple(torch.randn_like(p) for p in values)
        _close(jvp(f, values, tangents)[1], torch.autograd.functional.jvp(f, values, tangents)[1])
        argnums = tuple(range(len(values)))
        _close(jacrev(f, argnums=argnums)(*values), torch.autograd.functional.jacobian(f, values))
        _close(jacfwd(f, argnums=argnums)(*values), torch.autograd.functional.jacobian(f, values))
        scalar = lambda *p, f=f: f(*p).pow(2).sum()
        _close(hessian(scalar, argnums=0)(*values), torch.autograd.functional.hessian(scalar, values)[0][0])


@pytest.mark.skipif(_TRITON is not None, reason=f"Triton backend unavailable: {_TRITON}")
def test_triton_engine_under_every_transform():
    h, u, v, c, a = _problem(2, batch=2, dim=4, hidden=2, depth=3, seed=13)
    h32, u32, v32 = (t.float() for t in (h, u, v))
    engine, _ = _stacks(c, a, "tanh", "triton")
    _, reference = _stacks(c, a, "tanh", "reference")

    def ref64(*p):
        return reference(*(t.double() for t in p))

    tangents = tuple(torch.randn_like(t) for t in (h32, u32, v32))
    _close(jvp(engine, (h32, u32, v32), tangents)[1], jvp(ref64, (h32, u32, v32), tangents)[1], tol=1e-5)
    _close(grad(_loss(engine), argnums=(0, 1, 2))(h32, u32, v32), grad(_loss(ref64), argnums=(0, 1, 2))(h32, u32, v32),
           tol=1e-5)
    hs = torch.randn(2, *h32.shape)
    _close(vmap(engine, (0, None, None))(hs, u32, v32), torch.stack([ref64(x, u32, v32) for x in hs]), tol=1e-5)
    _close(hessian(_loss(engine), argnums=0)(h32, u32, v32), hessian(_loss(ref64), argnums=0)(h32, u32, v32),
           tol=1e-5)


_NO_FALLBACK = textwrap.dedent("""
    import torch, deepres
    from torch.func import grad, jvp, vmap
    h, u, v = torch.randn(3, 4, 3), torch.randn(5, 2, 3), torch.randn(5, 2, 3)
    f = lambda hh, uu, vv: deepres.residual_stack(hh, uu, vv, multiplier=0.1, backend="torch", checkpoint_every=2)
    vmap(f, (0, None, None))(h, u, v)
    vmap(f, (0, 0, None))(h, torch.randn(3, 5, 2, 3), v)
    vmap(grad(lambda hh, uu, vv: f(hh, uu, vv).sum(), argnums=(0, 1)), (0, None, None))(h, u, v)
    vmap(lambda t: jvp(f, (h[0], u, v), (h[0], t, v))[1])(torch.randn(3, 5, 2, 3))
    ode = deepres.MeanODE(3, 4, 2)
    vmap(lambda hh: ode(hh))(torch.randn(3, 2, 3))
    vmap(grad(lambda hh: ode(hh).sum()))(torch.randn(3, 2, 3))
    if {control}:  # the raw custom op has no batching rule: PyTorch's fallback warns
        from deepres.engines.torch_engine import torch_stack
        vmap(lambda hh: torch_stack(hh, u[None], v[None], 0.1, 1.0, "tanh", 1, False)[0])(h[:, None])
    print("done")
""")


@pytest.mark.parametrize("control", [False, True])
def test_vmap_uses_no_per_example_fallback(control):
    """PyTorch prints the fallback's warning from C++ to the process's stderr (not through Python's
    warnings), so the check runs in a subprocess and reads its stderr; the control shows it would."""
    result = subprocess.run([sys.executable, "-c", _NO_FALLBACK.format(control=control)], capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode == 0 and "done" in result.stdout, result.stderr
    assert ("performance drop" in result.stderr) == control, result.stderr


def test_the_ntk_example_runs_and_agrees_with_itself():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "examples" / "ntk.py"
    spec = importlib.util.spec_from_file_location("ntk_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    report = module.ntk_report(depth=8, samples=3)
    assert report["kernel_gap"] <= 1e-12 and report["trace"] > 0
    # The linearization's error is second order: relative to the move it shrinks with the step.
    assert report["lin_error_small"] < report["lin_error_large"] / 20
