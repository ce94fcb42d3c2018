"""``torch.nn.Module`` wrappers: :class:`ResidualStack` and :class:`DeepResNet`."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import nn

from deepres._checks import check_bool, check_positive_int, check_tensor
from deepres.engines.common import HALF_DTYPES, autocast_disabled, autocast_enabled
from deepres.functional import StackOptions, run_stack, stack_options
from deepres.parameterization import Parameterization
from deepres.scaling import ScaledParameter

__all__ = ["DeepResNet", "EmbeddedNetwork", "ResidualStack", "draw_embedding_and_readout"]

def _check_replicas(replicas: object) -> int | None:
    if replicas is None:
        return None
    return check_positive_int(replicas, "replicas")


def _option(field: str, doc: str) -> property:
    """A read-only attribute of the module's resolved :class:`~deepres.functional.StackOptions`."""
    return property(lambda self: getattr(self.options, field), doc=doc)


class ResidualStack(nn.Module):
    """A stack of L two-layer-perceptron residual blocks (docs/design.md §1, eq. (1)).

    ``forward(h)`` returns ``h_L`` where ``h_l = h_{l-1} + c·Σ_j v_{l,j} σ(a·u_{l,j}ᵀ h_{l-1})``.
    The weights are initialized, and c, a and the learning-rate multiplier
    chosen, by the parameterization (:class:`deepres.Parameterization`).

    Args:
        depth: number of blocks L.
        dim: embedding dimension D.
        hidden: units per block M.
        alpha: scale α of the parameterization. Default 1.0.
        parameterization: ``"mlu"`` (default), ``"depth_mup"`` or ``"standard"``.
        activation: ``"tanh"`` (default), ``"relu"``, ``"gelu"``, ``"silu"``, ``"identity"``.
        backend: ``"auto"`` (default), ``"torch"``, ``"triton"``, ``"reference"``
            (see :func:`deepres.residual_stack`).
        checkpoint_every: ``None`` (default: h before every layer, k = 1), an
            int k or ``"sqrt"`` (k = ⌈√L⌉): memory policy of the backward pass
            (see :func:`deepres.residual_stack`); resolved to k here, once.
        precision: ``"tf32x3"``, ``"ieee"``, ``"tf32"`` or None (default: the
            engine's default): the Triton kernels' dot precision (see
            :func:`deepres.residual_stack`).
        replicas: None (default) for one network; an int R for R independent
            networks trained in one launch (weights (R, L, M, D), inputs (R, B, D)).
        device, dtype: of the parameters. Defaults: PyTorch's defaults.
        generator: a ``torch.Generator`` for the initialization. Default: the
            global generator.

    Attributes:
        u, v: ``nn.Parameter`` of shape (L, M, D), or (R, L, M, D).
        multiplier (float): c. pre_scale (float): a. activation, backend,
        precision: as given. checkpoint_every (int): the resolved segment
        length k ≥ 1. options (StackOptions): all of them, as resolved once
        here and passed to every forward call.
        lr_multiplier (float): factor on the base learning rate η.
        parameterization (Parameterization): the full scheme.

    Example:
        >>> stack = ResidualStack(depth=512, dim=16, hidden=4, checkpoint_every="sqrt")
        >>> stack(torch.randn(8, 16)).shape
        torch.Size([8, 16])
    """

    multiplier = _option("multiplier", "c (float).")
    pre_scale = _option("pre_scale", "a (float).")
    activation = _option("activation", "The activation's name.")
    backend = _option("backend", "The backend's name.")
    checkpoint_every = _option("every", "The resolved checkpoint segment length k ≥ 1 (int).")
    precision = _option("precision", "The precision asked for, or None (the engine's default).")

    def __init__(self, depth: int, dim: int, hidden: int, *, alpha: float = 1.0,
                 parameterization: str = "mlu", activation: str = "tanh", backend: str = "auto",
                 checkpoint_every: int | str | None = None, precision: str | None = None,
                 replicas: int | None = None, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.parameterization = Parameterization(parameterization, depth, hidden, dim, alpha)
        p = self.parameterization
        self.options: StackOptions = stack_options(
            p.depth, multiplier=float(p.multiplier), pre_scale=float(p.pre_scale), activation=activation,
            backend=backend, checkpoint_every=checkpoint_every, precision=precision)
        self.replicas = _check_replicas(replicas)
        shape = (depth, hidden, dim) if self.replicas is None else (self.replicas, depth, hidden, dim)
        u = torch.empty(shape, device=device, dtype=dtype)
        v = torch.empty(shape, device=device, dtype=dtype)
        with torch.no_grad():
            u.normal_(0.0, p.init_std_u, generator=generator)
            v.normal_(0.0, p.init_std_v, generator=generator)
        self.u = nn.Parameter(u)
        self.v = nn.Parameter(v)
        self.lr_multiplier = float(p.lr_multiplier)

    @property
    def depth(self) -> int:
        return self.parameterization.depth

    @property
    def dim(self) -> int:
        return self.parameterization.dim

    @property
    def hidden(self) -> int:
        return self.parameterization.hidden

    def scaled_parameters(self) -> Iterator[ScaledParameter]:
        """u and v with the parameterization's lr multiplier (see :mod:`deepres.scaling`)."""
        for name in ("u", "v"):
            yield ScaledParameter(name, getattr(self, name), self.lr_multiplier, name,
                                  self.parameterization, replica_axis=self.replicas is not None)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Args: h (B, D), or (R, B, D) with replicas. Returns: h_L, same shape."""
        return run_stack(h, self.u, self.v, self.options)

    def extra_repr(self) -> str:
        p = self.parameterization
        replicas = "" if self.replicas is None else f", replicas={self.replicas}"
        return (f"depth={p.depth}, dim={p.dim}, hidden={p.hidden}, alpha={p.alpha}, "
                f"parameterization={p.name!r}, activation={self.activation!r}, "
                f"backend={self.backend!r}, checkpoint_every={self.checkpoint_every!r}, "
                f"precision={self.precision!r}{replicas}")


class _FullPrecisionMatmul(torch.autograd.Function):
    """a @ b with autocast off in the forward *and* the backward pass.

    An autocast region also covers a backward pass run inside it, so a plain
    matmul would compute the embedding's and readout's gradients in the
    autocast dtype; here they stay in the inputs' precision. b may be
    broadcast against a's leading axes (the replicas): its gradient is summed
    over them. Differentiable again (the backward is made of matmuls).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        with autocast_disabled(a.device.type):
            return a @ b

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        a, b = ctx.saved_tensors
        grad_a = grad_b = None
        with autocast_disabled(grad.device.type):
            if ctx.needs_input_grad[0]:
                grad_a = grad @ b.transpose(-1, -2)
            if ctx.needs_input_grad[1]:
                grad_b = a.transpose(-1, -2) @ grad
                while grad_b.dim() > b.dim():
                    grad_b = grad_b.sum(0)
        return grad_a, grad_b



def _full_precision_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b in the inputs' precision: plainly, or through :class:`_FullPrecisionMatmul` inside an
    autocast region (plain outside, so that ``torch.func`` transforms, which need a forward-mode
    rule that dynamo cannot trace, work on the modules)."""
    if autocast_enabled(a.device.type):
        return _FullPrecisionMatmul.apply(a, b)
    return a @ b


def draw_embedding_and_readout(in_features: int, out_features: int, dim: int, *,
                                device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                                generator: torch.Generator | None = None,
                                ) -> tuple[torch.Tensor, torch.Tensor]:
    """W_E (D, d_in) with N(0, 1/d_in) entries, then W_U (D, d_out) with N(0, d_out) entries."""
    embed = torch.empty(dim, in_features, device=device, dtype=dtype)
    readout = torch.empty(dim, out_features, device=device, dtype=dtype)
    with torch.no_grad():
        embed.normal_(0.0, 1.0 / math.sqrt(in_features), generator=generator)
        readout.normal_(0.0, math.sqrt(out_features), generator=generator)
    return embed, readout


class EmbeddedNetwork(nn.Module):
    """What :class:`DeepResNet` and its limit :class:`deepres.MeanODENet` share: the fixed
    (or trained) embedding ``h_0 = W_E x`` and readout ``f = W_Uᵀ h / D`` around a body.

    Subclasses set ``in_features`` and ``out_features``, register ``embed_weight``
    (D, d_in) and ``readout_weight`` (D, d_out) with :meth:`_register_weight`, and
    define :meth:`embed` (x ↦ h_0) and :meth:`body` (h_0 ↦ the final embedding).
    """

    in_features: int
    out_features: int

    def _register_weight(self, name: str, value: torch.Tensor, trainable: bool) -> None:
        """Hold ``value`` as a trainable ``nn.Parameter`` or as a buffer (the tensor itself)."""
        check_bool(trainable, f"the train flag of {name}")
        if trainable:
            self.register_parameter(name, value if isinstance(value, nn.Parameter) else nn.Parameter(value))
        else:
            self.register_buffer(name, value.detach() if value.requires_grad else value)

    def _embed(self, x: object) -> torch.Tensor:
        """W_E x for x (N, d_in), checked: (N, D)."""
        x = check_tensor(x, "x")
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"x must have shape (N, {self.in_features}); got {tuple(x.shape)}")
        dtype = self.embed_weight.dtype
        if x.dtype != dtype:
            if not (autocast_enabled(x.device.type) and x.dtype in HALF_DTYPES):
                raise TypeError(f"x must have dtype {dtype}; got {x.dtype}")
            x = x.to(dtype)  # an autocast-ed layer's output: the stream stays in full precision
        return _full_precision_matmul(x, self.embed_weight.T)

    def scaled_parameters(self) -> Iterator[ScaledParameter]:
        """W_E and W_U when they are trained, with multiplier 1 (see :mod:`deepres.scaling`)."""
        for name, role in (("embed_weight", "embedding"), ("readout_weight", "readout")):
            weight = getattr(self, name)
            if isinstance(weight, nn.Parameter):
                yield ScaledParameter(name, weight, 1.0, role)

    def readout(self, h: torch.Tensor) -> torch.Tensor:
        """f = W_Uᵀ h / D: (..., N, D) → (..., N, d_out), in h's precision even under autocast."""
        return _full_precision_matmul(h, self.readout_weight) / self.readout_weight.shape[0]

    def body(self, h0: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """h_0 ↦ the final embedding (the residual stack, or the mean ODE)."""
        raise NotImplementedError

    def embed(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """x ↦ h_0."""
        raise NotImplementedError

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The final embedding: ``body(embed(x))``."""
        return self.body(self.embed(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x (N, d_in). Returns: f(x), (..., N, d_out)."""
        return self.readout(self.features(x))


class DeepResNet(EmbeddedNetwork):
    """The full network of the paper's experiments: embedding, residual stack, readout.

    ``f(x) = W_Uᵀ h_L / D`` with ``h_0 = W_E x``; W_E (D, d_in) has N(0, 1/d_in)
    entries and W_U (D, d_out) N(0, d_out) entries. By default only the stack's
    u and v are trained; W_E and W_U are buffers.

    Args:
        in_features: d_in. out_features: d_out.
        depth, dim, hidden: L, D, M of the stack.
        train_embedding: hold W_E as a trainable ``nn.Parameter``. Default False.
        train_readout: hold W_U as a trainable ``nn.Parameter``. Default False.
        **stack options: ``alpha``, ``parameterization``, ``activation``,
            ``backend``, ``checkpoint_every``, ``precision``, ``replicas``, ``device``,
            ``dtype``, ``generator`` as for :class:`ResidualStack`. The
            generator draws W_E, then W_U, then the stack's u and v. With
            ``dtype=torch.float16`` or ``torch.bfloat16`` only u and v are
            stored in that dtype: W_E, W_U, the inputs x and the residual
            stream are float32.

    Under ``torch.autocast`` the network keeps its precision (the embedding,
    the residual stream and the readout stay in the parameters' dtype and a
    half-precision x from an autocast-ed layer is taken in that dtype); see
    :func:`deepres.residual_stack` for what the engines do with the weights.

    Attributes:
        embed_weight: W_E, (D, d_in). readout_weight: W_U, (D, d_out).
        stack: the :class:`ResidualStack`.
        lr_multiplier: the stack's lr multiplier.

    Example:
        >>> net = DeepResNet(5, 5, depth=64, dim=16, hidden=4, replicas=3)
        >>> net(torch.randn(10, 5)).shape   # three networks, one call
        torch.Size([3, 10, 5])
    """

    def __init__(self, in_features: int, out_features: int, depth: int, dim: int, hidden: int, *,
                 alpha: float = 1.0, parameterization: str = "mlu", activation: str = "tanh",
                 backend: str = "auto", checkpoint_every: int | str | None = None,
                 precision: str | None = None, replicas: int | None = None, train_embedding: bool = False,
                 train_readout: bool = False,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.in_features = check_positive_int(in_features, "in_features")
        self.out_features = check_positive_int(out_features, "out_features")
        check_positive_int(dim, "dim")
        stream_dtype = torch.float32 if dtype in HALF_DTYPES else dtype
        embed, readout = draw_embedding_and_readout(in_features, out_features, dim, device=device,
                                                    dtype=stream_dtype, generator=generator)
        self.stack = ResidualStack(
            depth, dim, hidden, alpha=alpha, parameterization=parameterization,
            activation=activation, backend=backend, checkpoint_every=checkpoint_every,
            precision=precision, replicas=replicas, device=device, dtype=dtype, generator=generator,
        )
        self._register_weight("embed_weight", embed, train_embedding)
        self._register_weight("readout_weight", readout, train_readout)

    @property
    def lr_multiplier(self) -> float:
        return self.stack.lr_multiplier

    @property
    def replicas(self) -> int | None:
        return self.stack.replicas

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """h_0 = W_E x: (N, d_in) → (N, D), or (R, N, D) with replicas (shared x)."""
        h0 = self._embed(x)
        if self.replicas is not None:
            h0 = h0.unsqueeze(0).expand(self.replicas, -1, -1)
        return h0

    def body(self, h0: torch.Tensor) -> torch.Tensor:
        """The residual stack: h_0 (N, D) or (R, N, D) ↦ h_L, same shape."""
        return self.stack(h0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x (N, d_in). Returns: f(x), (N, d_out); or (R, N, d_out) with replicas."""
        return self.readout(self.features(x))
