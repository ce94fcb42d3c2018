"""``torch.nn.Module`` wrappers of the Neural Mean ODE: :class:`MeanODE` and :class:`MeanODENet`."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from deepres._checks import (
    BACKSOLVE,
    check_bool,
    check_choice,
    check_positive_int,
    check_tensor,
    resolve_checkpoint_every,
)
from deepres.activations import check_activation
from deepres.engines.common import HALF_DTYPES, autocast_enabled
from deepres.meanode.particles import PARTICLE_INITS, init_particles
from deepres.meanode.pool import GradientPool
from deepres.meanode.tableaus import SOLVERS, TABLEAUS
from deepres.meanode.transforms import solve_apply
from deepres.modules import DeepResNet, EmbeddedNetwork, draw_embedding_and_readout
from deepres.parameterization import Parameterization
from deepres.scaling import ScaledParameter

__all__ = ["GRADIENTS", "MeanODE", "MeanODENet"]

#: Names accepted by the ``gradient`` argument.
GRADIENTS: tuple[str, ...] = ("adjoint", "discrete")

_DTYPES = (torch.float32, torch.float64)


def _check_dtype(dtype: object) -> torch.dtype:
    dtype = torch.get_default_dtype() if dtype is None else dtype
    if dtype not in _DTYPES:
        raise TypeError(f"dtype must be torch.float32 or torch.float64; got {dtype!r}")
    return dtype  # type: ignore[return-value]


def _resolve_every(steps: int, checkpoint_every: object, gradient: str) -> int:
    """Segment length k, or BACKSOLVE (which only the adjoint route takes)."""
    every = resolve_checkpoint_every(steps, checkpoint_every, backsolve=True)
    if every == BACKSOLVE and gradient != "adjoint":
        raise ValueError(
            "checkpoint_every='backsolve' needs gradient='adjoint' (the exact gradient of the "
            f"discrete solve needs the forward states); got gradient={gradient!r}"
        )
    return every


class MeanODE(nn.Module):
    """The Neural Mean ODE (docs/design.md §2) with K particles on a fixed depth grid of N steps.

    ``forward(h0)`` integrates ``∂_s h = F(h, s)``, ``F(h, s) = m·(1/K)·Σ_k v_k(s) σ(a·u_k(s)ᵀh)``
    from s = 0 to 1 and returns h(1). The particles' weights live on the
    solver's node grid (one node per distinct stage time, see
    :mod:`deepres.meanode.tableaus`); all nodes start from the same K particles.
    With ``solver="euler"`` this is exactly a :class:`deepres.ResidualStack`
    of depth N and width K whose blocks all start from those particles.

    Args:
        dim: embedding dimension D.
        particles: number of particles K (even for the paired inits).
        steps: number of solver steps N (≥ 1).
        alpha: scale α of the parameterization. Default 1.0.
        parameterization: ``"mlu"`` (default; the scaling with a mean-ODE
            limit), ``"depth_mup"`` or ``"standard"``. Initial stds, a and the
            lr multiplier are those of the parameterization for a ResNet of
            depth N and width K (see ``field_multiplier`` below).
        activation: ``"tanh"`` (default), ``"relu"``, ``"gelu"``, ``"silu"``, ``"identity"``.
        solver: ``"euler"``, ``"midpoint"`` or ``"rk4"`` (default).
        gradient: ``"adjoint"`` (default: integrate the adjoint ODE backward
            and return the pointwise gradient density at the nodes; see
            :mod:`deepres.meanode.adjoint`) or ``"discrete"`` (the exact
            gradient of the discrete solve; see :mod:`deepres.meanode.discrete`).
        particle_init: ``"antithetic"`` (default), ``"sobol"`` or ``"iid"``
            (see :mod:`deepres.meanode.particles`).
        checkpoint_every: memory policy of the backward pass. ``None``
            (default) keeps h before every step ((N + 1)·B·D numbers); an int
            k keeps it every k steps and recomputes each segment ((N/k + k)·B·D,
            one extra forward solve); ``"sqrt"`` uses k = ⌈√N⌉;
            ``"backsolve"`` (adjoint route only) keeps nothing and
            re-integrates h backward in depth alongside the adjoint (O(B·D),
            about one extra forward solve, h recovered to the solver's order).
        device, dtype: of the parameters (float32 or float64). Defaults:
            PyTorch's defaults.
        generator: a ``torch.Generator`` for the particles. Default: the global one.

    Attributes:
        checkpoint_every (int): the resolved policy: the segment length k ≥ 1,
            or :data:`deepres._checks.BACKSOLVE` for ``"backsolve"``.
        u, v: ``nn.Parameter`` of shape (nodes, K, D), stored feature-major
            (``u.transpose(1, 2)`` is contiguous), which makes the solver's
            GEMMs several times faster on CPU; any layout works.
        node_times: (nodes,) buffer, the depth s_j ∈ [0, 1] of each node.
        node_weights: (nodes,) buffer, the quadrature weight q_j of each node.
        field_multiplier (float): m, the field constant: m = c·N·K for the
            parameterization's residual multiplier c of depth N and width K,
            so that the euler solve is the ResNet; for ``mlu`` m = α
            (independent of N and K). pre_scale (float): a (1/D for ``mlu``).
        lr_multiplier: the parameterization's lr multiplier (N·K·D/α² for
            ``mlu``) times Δ/q_j at node j: a float for euler and midpoint (every
            q_j = Δ), a (nodes, 1, 1) buffer for rk4. With it, the plain
            step ``w ← w − η·lr_multiplier·w.grad`` of the adjoint route
            moves every node and particle by −η·(D/α²)·ρ(s_j), the pointwise
            limit update of docs/design.md §2 (see docs/meanode.md).
        parameterization (Parameterization): the scheme for depth N, width K.

    Example:
        >>> ode = MeanODE(dim=8, particles=256, steps=16)
        >>> h1 = ode(torch.randn(10, 8))        # zero drift at init: h1 == h0
        >>> h1, path = ode(torch.randn(10, 8), return_nodes=True)
        >>> path.shape                           # rk4: 2N + 1 nodes
        torch.Size([33, 10, 8])
    """

    def __init__(self, dim: int, particles: int, steps: int, *, alpha: float = 1.0,
                 parameterization: str = "mlu", activation: str = "tanh", solver: str = "rk4",
                 gradient: str = "adjoint", particle_init: str = "antithetic",
                 checkpoint_every: int | str | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        dim = check_positive_int(dim, "dim")
        particles = check_positive_int(particles, "particles")
        steps = check_positive_int(steps, "steps")
        self.parameterization = Parameterization(parameterization, steps, particles, dim, alpha)
        self.activation = check_activation(activation)
        self.solver = check_choice(solver, "solver", SOLVERS)
        self.gradient = check_choice(gradient, "gradient", GRADIENTS)
        self.particle_init = check_choice(particle_init, "particle_init", PARTICLE_INITS)
        self.checkpoint_every = checkpoint_every  # its setter resolves the policy, once
        dtype = _check_dtype(dtype)
        tab = TABLEAUS[solver]
        self._tableau = tab
        self._gradient_pool = GradientPool()
        p = self.parameterization
        u0, v0 = init_particles(particle_init, particles, dim, p.init_std_u, p.init_std_v,
                                device=device, dtype=dtype, generator=generator)
        nodes = tab.num_nodes(steps)
        # Feature-major storage: (nodes, D, K) contiguous, seen as (nodes, K, D).
        self.u = nn.Parameter(u0.t().expand(nodes, dim, particles).contiguous().transpose(1, 2))
        self.v = nn.Parameter(v0.t().expand(nodes, dim, particles).contiguous().transpose(1, 2))
        self.field_multiplier = float(p.multiplier * steps * particles)
        self.pre_scale = float(p.pre_scale)
        self.register_buffer("node_times", tab.node_times(steps, dtype=dtype, device=device),
                             persistent=False)
        weights = tab.node_weights(steps)
        self.register_buffer("node_weights", torch.tensor(weights, dtype=dtype, device=device),
                             persistent=False)
        delta = 1.0 / steps
        if all(w == delta for w in weights):
            self.lr_multiplier: float | torch.Tensor = float(p.lr_multiplier)
        else:
            ratios = torch.tensor([delta / w for w in weights], dtype=torch.float64)
            self.register_buffer("lr_multiplier", (ratios * p.lr_multiplier).to(
                device=device, dtype=dtype).view(-1, 1, 1), persistent=False)

    # Options after construction. Each is honoured exactly (the module then equals one built
    # with the new value) or refused at assignment, naming it: solver and particle_init made
    # the node grid, node_times, lr_multiplier and the particles, which a new value cannot
    # remake; gradient, checkpoint_every and activation are read at every forward.
    def _set_fixed(self, name: str, value: str, choices: tuple[str, ...], made: str) -> None:
        """Set option ``name`` at construction; refuse another value afterwards (it ``made`` what)."""
        value = check_choice(value, name, choices)
        current = self.__dict__.get(f"_{name}")
        if current is not None and value != current:
            raise AttributeError(f"MeanODE.{name} cannot change after construction ({made}); build a new "
                                 f"MeanODE({name}={value!r}); got {value!r} for a {current!r} module")
        self.__dict__[f"_{name}"] = value

    @property
    def solver(self) -> str:
        """The solver (fixed at construction: it made the node grid and ``lr_multiplier``)."""
        return self._solver

    @solver.setter
    def solver(self, value: str) -> None:
        self._set_fixed("solver", value, SOLVERS,
                        "the weights live on its node grid, and lr_multiplier is its")

    @property
    def particle_init(self) -> str:
        """How the particles were drawn (fixed at construction)."""
        return self._particle_init

    @particle_init.setter
    def particle_init(self, value: str) -> None:
        self._set_fixed("particle_init", value, PARTICLE_INITS, "the particles are drawn")

    @property
    def activation(self) -> str:
        """The activation σ (may be changed: read at every forward)."""
        return self._activation

    @activation.setter
    def activation(self, value: str) -> None:
        self._activation = check_activation(value)

    @property
    def gradient(self) -> str:
        """The gradient route (may be changed, but not to ``"discrete"`` with ``"backsolve"``)."""
        return self._gradient

    @gradient.setter
    def gradient(self, value: str) -> None:
        value = check_choice(value, "gradient", GRADIENTS)
        if self.__dict__.get("_every") == BACKSOLVE and value != "adjoint":
            raise ValueError(f"gradient={value!r} needs the forward states, which "
                             "checkpoint_every='backsolve' does not keep; set checkpoint_every first, or "
                             f"build a new MeanODE; got {value!r}")
        self._gradient = value

    @property
    def checkpoint_every(self) -> int:
        """The resolved memory policy: the segment length k ≥ 1, or :data:`deepres._checks.BACKSOLVE`.

        May be changed: a new policy (None, an int, ``"sqrt"`` or ``"backsolve"``) is
        resolved at assignment, once.
        """
        return self._every

    @checkpoint_every.setter
    def checkpoint_every(self, value: int | str | None) -> None:
        self._every = _resolve_every(self.steps, value, self.gradient)

    @property
    def dim(self) -> int:
        return self.parameterization.dim

    @property
    def particles(self) -> int:
        return self.parameterization.hidden

    @property
    def steps(self) -> int:
        return self.parameterization.depth

    @property
    def nodes(self) -> int:
        return self._tableau.num_nodes(self.steps)

    def scaled_parameters(self) -> Iterator[ScaledParameter]:
        """u and v with their per-node lr multiplier (see :mod:`deepres.scaling`)."""
        for name in ("u", "v"):
            yield ScaledParameter(name, getattr(self, name), self.lr_multiplier, name, self.parameterization)

    def _check_input(self, h0: object) -> torch.Tensor:
        h0 = check_tensor(h0, "h0")
        if h0.dim() != 2 or h0.shape[1] != self.dim:
            raise ValueError(f"h0 must have shape (B, D) = (B, {self.dim}); got {tuple(h0.shape)}")
        dtype = self.u.dtype
        if dtype not in _DTYPES:
            raise TypeError(f"the parameters must be float32 or float64 (the solver accumulates in their "
                            f"dtype); got {dtype} (was the module converted with .half() or .to()?)")
        if h0.dtype != dtype:
            if not (autocast_enabled(h0.device.type) and h0.dtype in HALF_DTYPES):
                raise TypeError(f"h0 must have the parameters' dtype {dtype}; got {h0.dtype}")
            h0 = h0.to(dtype)  # an autocast-ed layer's output: the solve stays in full precision
        if h0.device != self.u.device:
            raise ValueError(f"h0 must be on the parameters' device {self.u.device}; got {h0.device}")
        for name in ("u", "v"):
            w = getattr(self, name)
            expected = (self.nodes, self.particles, self.dim)
            if tuple(w.shape) != expected or w.dtype != dtype:
                raise ValueError(f"{name} must have shape {expected} and dtype {dtype}; "
                                 f"got {tuple(w.shape)} {w.dtype}")
        return h0

    def forward(self, h0: torch.Tensor, return_nodes: bool = False,
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Integrate the mean ODE from h(0) = h0.

        Args:
            h0: (B, D), the parameters' dtype and device (inside an autocast
                region a float16/bfloat16 h0 is taken in the parameters' dtype;
                autocast never lowers the solve's precision).
            return_nodes: also return h at every node. Default False.

        Returns:
            h(1), (B, D); with ``return_nodes``, (h(1), h at the nodes (nodes, B, D)).
            At half-step nodes h is interpolated to the solver's order (linear
            for midpoint, cubic Hermite for rk4). The node values carry no
            gradient.
        """
        h0 = self._check_input(h0)
        check_bool(return_nodes, "return_nodes")
        h1, _, nodes = solve_apply(h0, self.u, self.v, self.solver, self.steps, self.field_multiplier,
                                   self.pre_scale, self.activation, self.checkpoint_every, return_nodes,
                                   self.gradient, self._gradient_pool.id)
        return (h1, nodes) if return_nodes else h1

    def extra_repr(self) -> str:
        p = self.parameterization
        return (f"dim={p.dim}, particles={p.hidden}, steps={p.depth}, alpha={p.alpha}, "
                f"parameterization={p.name!r}, activation={self.activation!r}, solver={self.solver!r}, "
                f"gradient={self.gradient!r}, particle_init={self.particle_init!r}, "
                f"checkpoint_every={self.checkpoint_every!r}")


def _given_weight(value: object, name: str, shape: tuple[int, int]) -> torch.Tensor:
    value = check_tensor(value, name)
    if tuple(value.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}; got {tuple(value.shape)}")
    return value


class MeanODENet(EmbeddedNetwork):
    """The limit counterpart of :class:`deepres.DeepResNet`: embedding, mean ODE, readout.

    ``f(x) = W_Uᵀ h(1) / D`` with ``h(0) = W_E x``; W_E (D, d_in) has N(0, 1/d_in)
    entries and W_U (D, d_out) N(0, d_out) entries, as in DeepResNet. Given
    ``embed_weight``/``readout_weight`` tensors are used as they are (not
    copied), so a DeepResNet and its limit can share them.

    Args:
        in_features: d_in. out_features: d_out.
        dim, particles, steps: D, K, N of the :class:`MeanODE`.
        embed_weight: W_E to use, (D, d_in). Default None: drawn.
        readout_weight: W_U to use, (D, d_out). Default None: drawn.
        train_embedding: hold W_E as a trainable ``nn.Parameter``. Default False.
        train_readout: hold W_U as a trainable ``nn.Parameter``. Default False.
        **options: ``alpha``, ``parameterization``, ``activation``, ``solver``,
            ``gradient``, ``particle_init``, ``checkpoint_every``, ``device``,
            ``dtype``, ``generator`` as for :class:`MeanODE`. The generator
            draws W_E, then W_U (unless both are given), then the particles.
            dtype and device default to those of a given weight.

    Attributes:
        embed_weight, readout_weight: W_E, W_U (buffers unless trained).
        ode: the :class:`MeanODE`. lr_multiplier: the ode's.

    Example:
        >>> import deepres
        >>> resnet = deepres.DeepResNet(5, 5, depth=64, dim=16, hidden=4)
        >>> limit = MeanODENet.coupled_to(resnet, particles=1024, steps=32)
        >>> limit.embed_weight is resnet.embed_weight
        True
        >>> limit(torch.randn(10, 5)).shape
        torch.Size([10, 5])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        dim: int,
        particles: int,
        steps: int,
        *,
        embed_weight: torch.Tensor | None = None,
        readout_weight: torch.Tensor | None = None,
        train_embedding: bool = False,
        train_readout: bool = False,
        **options: object,
    ) -> None:
        super().__init__()
        self.in_features = check_positive_int(in_features, "in_features")
        self.out_features = check_positive_int(out_features, "out_features")
        dim = check_positive_int(dim, "dim")
        if embed_weight is not None:
            embed_weight = _given_weight(embed_weight, "embed_weight", (dim, in_features))
        if readout_weight is not None:
            readout_weight = _given_weight(readout_weight, "readout_weight", (dim, out_features))
        given = embed_weight if embed_weight is not None else readout_weight
        if given is not None:
            options.setdefault("dtype", given.dtype)
            options.setdefault("device", given.device)
        dtype = _check_dtype(options.get("dtype"))
        options["dtype"] = dtype
        device = options.get("device")
        generator = options.get("generator")
        if embed_weight is None or readout_weight is None:
            # Drawn in DeepResNet's order (W_E, then W_U) so that one seed gives both the same.
            drawn = draw_embedding_and_readout(in_features, out_features, dim, device=device,
                                               dtype=dtype, generator=generator)
            embed_weight = drawn[0] if embed_weight is None else embed_weight
            readout_weight = drawn[1] if readout_weight is None else readout_weight
        self.ode = MeanODE(dim, particles, steps, **options)  # type: ignore[arg-type]
        for name, weight in (("embed_weight", embed_weight), ("readout_weight", readout_weight)):
            if weight.dtype != self.ode.u.dtype or weight.device != self.ode.u.device:
                raise TypeError(f"{name} must have dtype {self.ode.u.dtype} on {self.ode.u.device}; "
                                f"got {weight.dtype} on {weight.device}")
        self._register_weight("embed_weight", embed_weight, train_embedding)
        self._register_weight("readout_weight", readout_weight, train_readout)

    @classmethod
    def coupled_to(cls, resnet: DeepResNet, particles: int, steps: int, **options: object) -> MeanODENet:
        """The limit of ``resnet``, sharing its W_E and W_U (the same tensors).

        Args:
            resnet: a :class:`deepres.DeepResNet`.
            particles, steps: K and N of the limit.
            **options: :class:`MeanODENet` options; ``alpha``, ``parameterization``,
                ``activation``, ``dtype`` and ``device`` default to the resnet's.
                A dtype or device that differs from the resnet's gives copies
                of W_E and W_U instead of shared tensors.

        Returns:
            The :class:`MeanODENet`.
        """
        if not isinstance(resnet, DeepResNet):
            raise TypeError(f"resnet must be a deepres.DeepResNet; got {type(resnet).__name__}")
        p = resnet.stack.parameterization
        options.setdefault("alpha", p.alpha)
        options.setdefault("parameterization", p.name)
        options.setdefault("activation", resnet.stack.activation)
        options.setdefault("dtype", resnet.embed_weight.dtype)
        options.setdefault("device", resnet.embed_weight.device)
        dtype, device = options["dtype"], options["device"]
        embed = resnet.embed_weight.to(device=device, dtype=dtype)  # type: ignore[arg-type]
        readout = resnet.readout_weight.to(device=device, dtype=dtype)  # type: ignore[arg-type]
        return cls(resnet.in_features, resnet.out_features, resnet.stack.dim, particles, steps,
                   embed_weight=embed, readout_weight=readout, **options)

    @property
    def lr_multiplier(self) -> float | torch.Tensor:
        return self.ode.lr_multiplier

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """h(0) = W_E x: (N, d_in) → (N, D)."""
        return self._embed(x)

    def body(self, h0: torch.Tensor) -> torch.Tensor:
        """The mean ODE: h(0) (N, D) ↦ h(1), (N, D)."""
        return self.ode(h0)
