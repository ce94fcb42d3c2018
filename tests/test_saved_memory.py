"""What the engine keeps for backward: counted with saved_tensors_hooks.

The bytes of every tensor autograd saves are added up, except tensors that
share storage with the inputs and parameters (they exist anyway). The first
checkpoint of the PyTorch engine is the input h_0 itself, so it keeps
⌈L/k⌉ − 1 new copies of h.
"""

import pytest
import torch

from deepres import residual_stack

L, B, D = 64, 8, 4


def saved_activation_bytes(backend, hidden, checkpoint_every=None):
    generator = torch.Generator().manual_seed(0)
    h = torch.randn(B, D, generator=generator, requires_grad=True)
    u = torch.randn(L, hidden, D, generator=generator, requires_grad=True)
    v = torch.randn(L, hidden, D, generator=generator, requires_grad=True)
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


def test_engine_keeps_h_per_layer_and_nothing_m_wide():
    narrow = saved_activation_bytes("torch", hidden=2)
    wide = saved_activation_bytes("torch", hidden=64)
    assert narrow == wide == (L - 1) * B * D * 4


@pytest.mark.parametrize(("every", "checkpoints"), [(8, 8), ("sqrt", 8), (5, 13), (100, 1)])
def test_checkpointing_keeps_one_h_per_segment(every, checkpoints):
    assert saved_activation_bytes("torch", hidden=16, checkpoint_every=every) == (checkpoints - 1) * B * D * 4


def test_reference_grows_with_width_and_engine_saves_less():
    reference_narrow = saved_activation_bytes("reference", hidden=2)
    reference_wide = saved_activation_bytes("reference", hidden=64)
    assert reference_wide > 4 * reference_narrow
    assert saved_activation_bytes("torch", hidden=64) * 4 <= reference_wide
    assert saved_activation_bytes("torch", hidden=64, checkpoint_every="sqrt") * 20 <= reference_wide
    assert saved_activation_bytes("torch", hidden=16, checkpoint_every=100) == 0  # h_0 is the only checkpoint
