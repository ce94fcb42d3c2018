"""What the engine keeps for backward: counted with saved_tensors_hooks.

The bytes of every tensor autograd saves are added up, except tensors that
share storage with the inputs and parameters (they exist anyway). The first
checkpoint of the PyTorch engine is the input h_0 itself, so it keeps
⌈L/k⌉ − 1 new copies of h.
"""

import math

import pytest
import torch

from deepres import residual_stack

L, B, D = 64, 8, 4


def saved_activation_bytes(backend, hidden, checkpoint_every=None, depth=L):
    generator = torch.Generator().manual_seed(0)
    h = torch.randn(B, D, generator=generator, requires_grad=True)
    u = torch.randn(depth, hidden, D, generator=generator, requires_grad=True)
    v = torch.randn(depth, hidden, D, generator=generator, requires_grad=True)
    owned = {t.untyped_storage().data_ptr() for t in (h, u, v)}
    seen: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in owned:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = residual_stack(h, u, v, multiplier=0.1, pre_scale=0.5, backend=backend,
                             checkpoint_every=checkpoint_every)
    out.sum().backward()  # the saved tensors are usable
    return sum(seen.values())


@pytest.mark.parametrize("engine", ["torch", "cpp"])
def test_engine_keeps_h_per_layer_and_nothing_m_wide(engine):
    narrow = saved_activation_bytes(engine, hidden=2)
    wide = saved_activation_bytes(engine, hidden=64)
    assert narrow == wide == (L - 1) * B * D * 4


@pytest.mark.parametrize("engine", ["torch", "cpp"])
@pytest.mark.parametrize(("every", "checkpoints"), [(8, 8), ("sqrt", 8), (5, 13), (100, 1)])
def test_checkpointing_keeps_one_h_per_segment(engine, every, checkpoints):
    # The C++ engine keeps exactly what the PyTorch engine keeps: h_0 itself and ⌈L/k⌉ − 1 copies of h.
    assert saved_activation_bytes(engine, hidden=16, checkpoint_every=every) == (checkpoints - 1) * B * D * 4


def test_reference_grows_with_width_and_engine_saves_less():
    reference_narrow = saved_activation_bytes("reference", hidden=2)
    reference_wide = saved_activation_bytes("reference", hidden=64)
    assert reference_wide > 4 * reference_narrow
    assert saved_activation_bytes("torch", hidden=64) * 4 <= reference_wide
    assert saved_activation_bytes("torch", hidden=64, checkpoint_every="sqrt") * 20 <= reference_wide
    assert saved_activation_bytes("torch", hidden=16, checkpoint_every=100) == 0  # h_0 is the only checkpoint


# --- The Triton engine (Triton's interpreter without CUDA) -------------------------------------------------

def _triton_runs_here():
    from deepres.engines.triton.support import unavailable_reason

    return unavailable_reason(torch.device("cuda" if torch.cuda.is_available() else "cpu")) is None


@pytest.mark.skipif(not _triton_runs_here(), reason="the Triton backend cannot run here")
@pytest.mark.parametrize(("every", "checkpoints"), [(None, 16), ("sqrt", 4), (5, 4)])
def test_triton_engine_keeps_only_the_checkpoints(every, checkpoints):
    # Depth 16 (interpreter speed): the fused forward saves h at the segment starts and nothing M-wide.
    saved = saved_activation_bytes("triton", hidden=16, checkpoint_every=every, depth=16)
    assert saved == checkpoints * B * D * 4


def test_triton_backward_workspace_within_the_memory_rule():
    # L = 4096, D = M = 64, B = 1024, checkpoint_every="sqrt": the step's transient memory — checkpoints,
    # the segment's layer inputs and the weight-gradient GEMM workspace (s, p, g for a chunk of layers) —
    # stays within a quarter of (weights + gradients), so the peak is at most 1.25 × (weights + gradients).
    from deepres.kernels.plan import backward_plan, backward_workspace, choose_config

    from deepres._checks import resolve_checkpoint_every

    depth, batch, dim, width = 4096, 1024, 64, 64
    every = resolve_checkpoint_every(depth, "sqrt")
    config = choose_config(batch, dim, width, 1, 132, backward=True)
    sizes = {"fp32": 4, "bf16": 2}
    buffers = backward_workspace(1, batch, dim, width, depth, every, need_weights=True, block_b=config.block_b)
    workspace = sum(math.prod(shape) * sizes[kind] for shape, kind in buffers.values())
    checkpoints = math.ceil(depth / every) * batch * dim * 4
    weights_and_grads = 2 * (2 * depth * width * dim * 4)
    assert {"scratch", "s", "p", "g"} == set(buffers)
    assert checkpoints + workspace <= weights_and_grads / 4
    # The GEMM path runs: the segments are cut into chunks that fit, walked and reduced in turn.
    plan = backward_plan(1, batch, dim, width, depth, every, need_weights=True, precision="tf32x3",
                         weight_dtype="fp32", activation="tanh", config=config)
    assert {launch.kernel for launch in plan} == {"stack_backward", "weight_grad"}
    covered = sorted(layer for launch in plan if launch.kernel == "stack_backward"
                     for layer in range(dict(launch.scalars)["lo"], dict(launch.scalars)["hi"]))
    assert covered == list(range(depth))
