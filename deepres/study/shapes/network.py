"""The networks of the shapes study: prefix-coupled embeddings and full-batch GD on u and v.

Every network is a :class:`deepres.DeepResNet` with the ``mlu`` parameterization
(docs/design.md §1): u, v with N(0, D) entries, a = 1/D, c = α/(L·M), lr multiplier
L·M·D/α², fixed W_E (D, d_in) with N(0, 1/d_in) entries, fixed W_U (D, d_out) with
N(0, d_out) entries, f = W_Uᵀ h_L / D. Across D the embeddings are coupled: one
pair of large matrices (D_max rows) is drawn per repetition, and a network of
dimension D uses their first D rows (:func:`coupled_embedding`, :func:`prefix`),
so coordinate i of every network's h sees the same W_E, W_U row i.

:func:`train_inplace` runs K full-batch gradient steps. Its forward pass is the
PyTorch engine's layer (``h ← h + c·σ(a·h uᵀ) v`` as two batched GEMMs) and its
backward pass the engine's formulas (docs/design.md §1, "Backward of (1)"); it
applies each layer's update in place as soon as that layer's gradient is
known, so that no gradient tensor of the size of u, v is ever allocated.
:func:`train_engine` does the same steps through :func:`deepres.residual_stack`
and autograd (any ``backend``); the two agree to float64 rounding (tests).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from deepres.activations import activation_and_derivative
from deepres.functional import residual_stack
from deepres.parameterization import Parameterization

__all__ = ["STEP_IMPLS", "coupled_embedding", "draw_weights", "mlu_scales", "prefix", "train_engine",
           "train_inplace"]

#: The two implementations of a gradient step: ``"inplace"`` (:func:`train_inplace`) and
#: ``"engine"`` (:func:`train_engine`).
STEP_IMPLS: tuple[str, ...] = ("inplace", "engine")


def coupled_embedding(in_features: int, out_features: int, dim_max: int, seed: int, *,
                      dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """The large W_E (D_max, d_in) ~ N(0, 1/d_in) and W_U (D_max, d_out) ~ N(0, d_out) of one repetition.

    Drawn in float64 on the CPU from two generators seeded by ``seed`` (one per
    matrix), then converted, so the draw is the same for every dtype and device.
    A network of dimension D ≤ D_max uses the first D rows (:func:`prefix`).

    Args:
        in_features: d_in. out_features: d_out. dim_max: D_max, the largest D of the study.
        seed: the repetition's seed. dtype: Default float32. device: Default CPU.

    Returns:
        (W_E, W_U), (D_max, d_in) and (D_max, d_out).

    Example:
        >>> we, wu = coupled_embedding(5, 5, 16, seed=0)
        >>> we.shape, wu.shape
        (torch.Size([16, 5]), torch.Size([16, 5]))
    """
    for name, value in (("in_features", in_features), ("out_features", out_features), ("dim_max", dim_max)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int ≥ 1; got {value!r}")
    gen_e = torch.Generator().manual_seed(seed)
    gen_u = torch.Generator().manual_seed(seed + 1)
    embed = torch.randn(dim_max, in_features, generator=gen_e, dtype=torch.float64) / math.sqrt(in_features)
    readout = torch.randn(dim_max, out_features, generator=gen_u, dtype=torch.float64)
    readout = readout * math.sqrt(out_features)
    return embed.to(device=device, dtype=dtype), readout.to(device=device, dtype=dtype)


def prefix(embed: torch.Tensor, readout: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The W_E, W_U of the D-network: the first ``dim`` rows of the repetition's large pair.

    Args:
        embed: (D_max, d_in). readout: (D_max, d_out). dim: D, 1 ≤ D ≤ D_max.

    Returns:
        (W_E[:D], W_U[:D]), contiguous.

    Example:
        >>> we, wu = coupled_embedding(5, 5, 16, seed=0)
        >>> small, _ = prefix(we, wu, 4)
        >>> bool(torch.equal(small, we[:4]))
        True
    """
    if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= embed.shape[0]:
        raise ValueError(f"dim must be an int in [1, {embed.shape[0]}]; got {dim!r}")
    return embed[:dim].contiguous(), readout[:dim].contiguous()


def mlu_scales(depth: int, hidden: int, dim: int, alpha: float = 1.0) -> Parameterization:
    """The ``mlu`` parameterization of an (L, M, D) network (:class:`deepres.Parameterization`).

    Example:
        >>> p = mlu_scales(4, 2, 8)
        >>> p.pre_scale, p.multiplier, p.lr_multiplier
        (0.125, 0.125, 64.0)
    """
    return Parameterization("mlu", depth=depth, hidden=hidden, dim=dim, alpha=alpha)


def draw_weights(depth: int, hidden: int, dim: int, replicas: int, seed: int, *,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """u, v of R replicas with the ``mlu`` initialization N(0, D), layout (L, R, M, D).

    Drawn on the CPU in ``dtype`` from one generator (u first), then moved: the
    reference network's 1.6 GB pair is drawn without a float64 copy.

    Example:
        >>> u, v = draw_weights(3, 2, 4, 5, seed=0)
        >>> u.shape
        torch.Size([3, 5, 2, 4])
    """
    gen = torch.Generator().manual_seed(seed)
    std = mlu_scales(depth, hidden, dim).init_std_u
    shape = (depth, replicas, hidden, dim)
    u = torch.randn(shape, generator=gen, dtype=dtype).mul_(std).to(device)
    v = torch.randn(shape, generator=gen, dtype=dtype).mul_(std).to(device)
    return u, v


def _check_record(record_steps: Sequence[int], steps: int) -> list[int]:
    record = sorted({int(s) for s in record_steps})
    if not record or record[0] < 0 or record[-1] > steps:
        raise ValueError(f"record_steps must be steps in [0, {steps}]; got {list(record_steps)!r}")
    return record


def train_inplace(x: torch.Tensor, y: torch.Tensor, embed: torch.Tensor, readout: torch.Tensor,
                  u: torch.Tensor, v: torch.Tensor, *, eta: float, steps: int, record_steps: Sequence[int],
                  alpha: float = 1.0, activation: str = "tanh",
                  ) -> dict[str, torch.Tensor]:
    """K full-batch GD steps on u, v (in place), recording h_L and f at ``record_steps``.

    The step is ``w ← w − η · (L·M·D/α²) · ∂loss/∂w`` with the loss ½·mean over
    samples of ‖f − y‖², per replica (as :func:`deepres.train`).

    Args:
        x: (N, d_in). y: (N, d_out). embed: W_E (D, d_in). readout: W_U (D, d_out).
        u, v: (L, R, M, D), updated in place. eta: η. steps: K ≥ 0.
        record_steps: steps k (0 ≤ k ≤ K) after which h_L and f are recorded.
        alpha: α. Default 1.0. activation: Default ``"tanh"``.

    Returns:
        ``features`` (S, R, N, D), ``outputs`` (S, R, N, d_out), ``losses`` (K+1, R).

    Example:
        >>> u, v = draw_weights(4, 2, 3, 2, seed=0)
        >>> we, wu = coupled_embedding(5, 5, 3, seed=1)
        >>> out = train_inplace(torch.randn(10, 5), torch.randn(10, 5), we, wu, u, v, eta=0.2, steps=2,
        ...                     record_steps=[1, 2])
        >>> out["features"].shape, out["losses"].shape
        (torch.Size([2, 2, 10, 3]), torch.Size([3, 2]))
    """
    depth, replicas, hidden, dim = u.shape
    record = _check_record(record_steps, steps)
    scales = mlu_scales(depth, hidden, dim, alpha)
    c, a, lr = scales.multiplier, scales.pre_scale, eta * scales.lr_multiplier
    h0 = (x @ embed.T).expand(replicas, -1, -1).contiguous()
    samples = x.shape[0]
    features, outputs, losses = [], [], []
    for step in range(steps + 1):
        inputs = []
        h = h0
        for layer in range(depth):
            inputs.append(h)
            s, _ = activation_and_derivative(activation, torch.bmm(h, u[layer].transpose(1, 2)).mul_(a))
            h = torch.baddbmm(h, s, v[layer], alpha=c)
        f = h @ readout / dim
        losses.append(0.5 * (f - y).pow(2).sum(-1).mean(-1))
        if step in record:
            features.append(h.clone())
            outputs.append(f.clone())
        if step == steps:
            break
        g = (f - y) @ readout.T / (dim * samples)  # ∂loss/∂h_L, (R, N, D)
        for layer in reversed(range(depth)):
            h_in = inputs[layer]
            s, ds = activation_and_derivative(activation, torch.bmm(h_in, u[layer].transpose(1, 2)).mul_(a))
            p = torch.bmm(g, v[layer].transpose(1, 2)).mul_(ds)  # σ'(z) ⊙ (g vᵀ), (R, N, M)
            g_next = torch.baddbmm(g, p, u[layer], alpha=c * a)  # with u before its update
            v[layer].baddbmm_(s.transpose(1, 2), g, alpha=-lr * c)
            u[layer].baddbmm_(p.transpose(1, 2), h_in, alpha=-lr * c * a)
            g = g_next
    return {"features": torch.stack(features), "outputs": torch.stack(outputs), "losses": torch.stack(losses)}


def train_engine(x: torch.Tensor, y: torch.Tensor, embed: torch.Tensor, readout: torch.Tensor,
                 u: torch.Tensor, v: torch.Tensor, *, eta: float, steps: int, record_steps: Sequence[int],
                 alpha: float = 1.0, activation: str = "tanh", backend: str = "auto",
                 ) -> dict[str, torch.Tensor]:
    """:func:`train_inplace` through :func:`deepres.residual_stack` and autograd (any ``backend``).

    Args:
        x, y, embed, readout, u, v, eta, steps, record_steps, alpha, activation: as :func:`train_inplace`
            (u, v (L, R, M, D) are updated in place).
        backend: the stack backend. Default ``"auto"``.

    Returns:
        As :func:`train_inplace`.

    Example:
        >>> u, v = draw_weights(4, 2, 3, 2, seed=0)
        >>> we, wu = coupled_embedding(5, 5, 3, seed=1)
        >>> train_engine(torch.randn(10, 5), torch.randn(10, 5), we, wu, u, v, eta=0.2, steps=1,
        ...              record_steps=[1])["outputs"].shape
        torch.Size([1, 2, 10, 5])
    """
    depth, replicas, hidden, dim = u.shape
    record = _check_record(record_steps, steps)
    scales = mlu_scales(depth, hidden, dim, alpha)
    h0 = (x @ embed.T).expand(replicas, -1, -1).contiguous()
    features, outputs, losses = [], [], []
    for step in range(steps + 1):
        # The engine takes (R, L, M, D): a view of the (L, R, M, D) storage, no copy.
        leaves = [u.transpose(0, 1).detach().requires_grad_(), v.transpose(0, 1).detach().requires_grad_()]
        with torch.set_grad_enabled(step < steps):
            h = residual_stack(h0, *leaves, multiplier=scales.multiplier, pre_scale=scales.pre_scale,
                               activation=activation, backend=backend)
            f = h @ readout / dim
            loss = 0.5 * (f - y).pow(2).sum(-1).mean(-1)
        losses.append(loss.detach())
        if step in record:
            features.append(h.detach().clone())
            outputs.append(f.detach().clone())
        if step == steps:
            break
        grads = torch.autograd.grad(loss.sum(), leaves)
        with torch.no_grad():
            for weight, grad in zip((u, v), grads, strict=True):
                weight.sub_(grad.transpose(0, 1), alpha=eta * scales.lr_multiplier)
    return {"features": torch.stack(features), "outputs": torch.stack(outputs), "losses": torch.stack(losses)}
