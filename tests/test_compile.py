"""deepres under torch.compile and torch.export: one graph node whatever the depth, the uncompiled
model's outputs and gradients with every CPU backend, no extra recompiles for a new batch size,
and exported programs that reproduce the module."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounter

import deepres
from tests.helpers import relative_error


def _deep_resnet(depth, **options):
    return deepres.DeepResNet(5, 3, depth=depth, dim=4, hidden=3, generator=torch.Generator().manual_seed(depth),
                              **options)


def _limit(gradient, **options):
    return deepres.MeanODENet(5, 3, dim=4, particles=6, steps=3, gradient=gradient,
                              generator=torch.Generator().manual_seed(3), **options)


MODELS = {
    "ResidualStack": lambda: deepres.ResidualStack(7, 5, 3, generator=torch.Generator().manual_seed(1)),
    "ResidualStack-replicas-sqrt": lambda: deepres.ResidualStack(9, 5, 2, replicas=2, checkpoint_every="sqrt",
                                                                 generator=torch.Generator().manual_seed(2)),
    "DeepResNet": lambda: _deep_resnet(6, train_readout=True),
    "MeanODENet-adjoint": lambda: _limit("adjoint"),
    "MeanODENet-adjoint-backsolve": lambda: _limit("adjoint", checkpoint_every="backsolve"),
    "MeanODENet-discrete": lambda: _limit("discrete", solver="midpoint"),
    "MeanODE": lambda: deepres.MeanODE(5, 4, 3, generator=torch.Generator().manual_seed(4)),
}


def _inputs(name):
    gen = torch.Generator().manual_seed(11)
    if name.startswith("ResidualStack-replicas"):
        return torch.randn(2, 6, 5, generator=gen)
    return torch.randn(6, 5, generator=gen)


def _output_and_grads(model, x):
    x = x.clone().requires_grad_()
    out = model(x)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(12))
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad((out * weight).sum(), [x, *params])
    return [out.detach(), *grads]


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compiled_models_match_uncompiled(name, backend):
    torch._dynamo.reset()
    model = MODELS[name]()
    x = _inputs(name)
    expected = _output_and_grads(model, x)
    got = _output_and_grads(torch.compile(model, backend=backend, fullgraph=True), x)
    for a, b in zip(got, expected, strict=True):
        assert relative_error(a, b) <= 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("name", ["DeepResNet", "MeanODENet-adjoint"])
def test_inductor_matches_uncompiled(name):
    torch._dynamo.reset()
    model = MODELS[name]()
    x = _inputs(name)
    expected = _output_and_grads(model, x)
    got = _output_and_grads(torch.compile(model, backend="inductor", fullgraph=True), x)
    for a, b in zip(got, expected, strict=True):
        assert relative_error(a, b) <= 1e-6


def _graph_nodes(model, x):
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(len(gm.graph.nodes))
        return gm.forward

    torch._dynamo.reset()
    torch.compile(model, backend=capture, fullgraph=True)(x).sum().backward()
    return graphs


@pytest.mark.parametrize("make", [lambda depth: _deep_resnet(depth),
                                  lambda depth: _deep_resnet(depth, checkpoint_every="sqrt"),
                                  lambda steps: deepres.MeanODENet(5, 3, dim=4, particles=4, steps=steps)])
def test_the_stack_is_one_node_whatever_its_depth(make):
    shallow, deep = _graph_nodes(make(4), torch.randn(3, 5)), _graph_nodes(make(256), torch.randn(3, 5))
    assert len(shallow) == len(deep) == 1  # one graph, no break
    assert shallow == deep


def test_a_new_batch_size_recompiles_no_more_than_a_builtin_layer():
    counts = {}
    plain = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))
    for name, model in (("deepres", _deep_resnet(16)), ("builtin", plain)):
        torch._dynamo.reset()
        counter = CompileCounter()
        compiled = torch.compile(model, backend=counter, fullgraph=True)
        for batch in (4, 5, 6, 9):
            compiled(torch.randn(batch, 5)).sum().backward()
        counts[name] = counter.frame_count
    assert counts["deepres"] == counts["builtin"]


def test_two_networks_of_different_depths_compile_in_one_process():
    """Dynamo turns a float that changes between compiles into a symbolic input; the scalar checks
    must not break the graph then."""
    torch._dynamo.reset()
    for depth in (8, 24):
        model = _deep_resnet(depth)
        x = _inputs("DeepResNet")
        got = torch.compile(model, backend="eager", fullgraph=True)(x)
        assert relative_error(got, model(x)) <= 1e-6


@pytest.mark.parametrize("make", [lambda: _deep_resnet(12, replicas=2, checkpoint_every=5),
                                  lambda: _limit("adjoint"), lambda: _limit("discrete", solver="euler")])
def test_exported_program_reproduces_the_module(make):
    model = make()
    x = _inputs("DeepResNet")
    program = torch.export.export(model, (x,))
    ops = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert any(op.startswith("deepres.") for op in ops), ops
    assert relative_error(program.module()(x), model(x)) <= 1e-6
    other = torch.randn(6, 5)
    assert relative_error(program.module()(other), model(other)) <= 1e-6
