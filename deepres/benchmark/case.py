"""One point of the benchmark grid (:class:`Case`) and its inputs (:func:`make_inputs`).

A :class:`Case` fixes a workload, its sizes, dtype and device; :func:`make_inputs`
draws its inputs from one seed, so every provider, in whatever process, gets
bit-identical u, v, h0 and loss probe.

Workload ``stack``: the residual stack h ← h + c·Σ_j v_j σ(a·u_jᵀh), L blocks of
M units. Workload ``meanode``: the Neural Mean ODE solved with rk4 on N steps,
K particles, its parameters on the 2N+1 rk4 nodes (node j at time j/(2N)). Both
draw their weights, c and a from :class:`deepres.Parameterization` (the ``mlu``
scheme): the stack's c is the scheme's residual multiplier for depth L and
width M; the mean ODE's field constant is that of depth N and width K times N
(one rk4 step covers Δs = 1/N of depth time).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from deepres.activations import ACTIVATIONS
from deepres.parameterization import Parameterization

__all__ = ["DTYPES", "MODES", "PARAMETERIZATION", "WORKLOADS", "Case", "Inputs", "make_inputs"]

WORKLOADS: tuple[str, ...] = ("stack", "meanode")
MODES: tuple[str, ...] = ("forward", "train")
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}
#: The parameterization every benchmark input is drawn with.
PARAMETERIZATION = "mlu"


@dataclass(frozen=True)
class Case:
    """One point of the benchmark grid.

    Args:
        workload: ``"stack"`` or ``"meanode"``. Default ``"stack"``.
        mode: ``"forward"`` (inference, no graph) or ``"train"`` (forward + backward).
            Default ``"train"``.
        depth: L (stack) or rk4 steps N (meanode). Default 64.
        batch: B, samples per network. Default 32.
        dim: D, width of the residual stream. Default 16.
        hidden: M units per block (stack) or K particles (meanode). Default 32.
        replicas: R independent networks (stack only; 1 = no replica axis). Default 1.
        activation: σ, one of :data:`deepres.ACTIVATIONS`. Default ``"tanh"``.
        dtype: ``"float32"`` or ``"float64"``. Default ``"float32"``.
        device: ``"cpu"`` or ``"cuda"``. Default ``"cpu"``.
        alpha: α of the ``mlu`` parameterization. Default 1.0.
        seed: seed of the inputs. Default 0.

    Example:
        >>> Case(depth=8, batch=4, dim=2, hidden=3).key()
        'stack-train-L8-B4-D2-M3-R1-tanh-float32-cpu-a1-s0'
    """

    workload: str = "stack"
    mode: str = "train"
    depth: int = 64
    batch: int = 32
    dim: int = 16
    hidden: int = 32
    replicas: int = 1
    activation: str = "tanh"
    dtype: str = "float32"
    device: str = "cpu"
    alpha: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.workload not in WORKLOADS:
            raise ValueError(f"workload must be one of {WORKLOADS}; got {self.workload!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}; got {self.mode!r}")
        for name in ("depth", "batch", "dim", "hidden", "replicas"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int; got {value!r}")
        if self.workload == "meanode" and self.replicas != 1:
            raise ValueError(f"replicas must be 1 for the meanode workload; got {self.replicas}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}; got {self.activation!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {tuple(DTYPES)}; got {self.dtype!r}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda'; got {self.device!r}")
        if not (math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"alpha must be finite and > 0; got {self.alpha!r}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def nodes(self) -> int:
        """Parameter nodes of the meanode rk4 grid: 2N + 1."""
        return 2 * self.depth + 1

    @property
    def layer_updates(self) -> int:
        """Sample-layer updates per step: R·B·L (stack), 4·B·N field evaluations per sample (meanode)."""
        if self.workload == "meanode":
            return 4 * self.batch * self.depth
        return self.replicas * self.batch * self.depth

    @property
    def samples(self) -> int:
        """Samples processed per step, all replicas together: R·B."""
        return self.replicas * self.batch

    def parameterization(self) -> Parameterization:
        """The scheme the inputs are drawn with (depth L or N, width M or K)."""
        return Parameterization(PARAMETERIZATION, depth=self.depth, hidden=self.hidden, dim=self.dim,
                                alpha=self.alpha)

    def model_flops(self) -> float:
        """Multiply-add FLOPs of one step by the cost model of a residual block.

        Per layer and sample: 4·M·D forward (two products of M·D multiply-adds),
        8·M·D more for backward (∂u, ∂v, ∂h; recomputation not counted).
        The meanode workload counts 4 field evaluations per step.
        """
        per_eval = 4.0 * self.hidden * self.dim * (3 if self.mode == "train" else 1)
        return per_eval * self.layer_updates

    def model_bytes(self) -> float:
        """Minimal memory traffic of one step: the weights read once per pass (and the
        weight gradients written once in training), the stream h read and written."""
        item = torch.empty((), dtype=self.torch_dtype).element_size()
        weights = 2.0 * self.hidden * self.dim * self.replicas * (
            self.nodes if self.workload == "meanode" else self.depth)
        passes = 3.0 if self.mode == "train" else 1.0  # forward read, backward read, gradient write
        stream = 2.0 * self.samples * self.dim * (2.0 if self.mode == "train" else 1.0)
        return item * (weights * passes + stream)

    def key(self) -> str:
        """A short unique name of the case (for files and tables)."""
        return (f"{self.workload}-{self.mode}-L{self.depth}-B{self.batch}-D{self.dim}-M{self.hidden}"
                f"-R{self.replicas}-{self.activation}-{self.dtype}-{self.device}-a{self.alpha:g}-s{self.seed}")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class Inputs:
    """The tensors of one case, identical for every provider.

    Attributes:
        h0: (B, D), or (R, B, D) with R > 1.
        u, v: stack: (L, M, D) or (R, L, M, D); meanode: (2N+1, K, D).
        probe: the loss weights, shaped like the output; loss = Σ probe ⊙ output.
        multiplier: c (stack), or the mean ODE's field constant (meanode). pre_scale: a.
    """

    h0: torch.Tensor
    u: torch.Tensor
    v: torch.Tensor
    probe: torch.Tensor
    multiplier: float
    pre_scale: float


def make_inputs(case: Case) -> Inputs:
    """Draw the inputs of ``case`` from ``case.seed`` (on the CPU, then moved).

    The weights' spread, c and a come from ``case.parameterization()``.

    Args:
        case: the :class:`Case`.

    Returns:
        :class:`Inputs` on ``case.device`` in ``case.dtype``. Every meanode node gets
        its own draw (not the tied initialization), so the forward is not the identity.

    Example:
        >>> inputs = make_inputs(Case(depth=8, batch=4, dim=2, hidden=3))
        >>> tuple(inputs.u.shape), tuple(inputs.h0.shape), inputs.multiplier == 1 / (8 * 3)
        ((8, 3, 2), (4, 2), True)
    """
    generator = torch.Generator().manual_seed(case.seed)
    dtype, device = case.torch_dtype, torch.device(case.device)
    scheme = case.parameterization()
    if case.workload == "stack":
        weight_shape: tuple[int, ...] = (case.depth, case.hidden, case.dim)
        stream_shape: tuple[int, ...] = (case.batch, case.dim)
        if case.replicas > 1:
            weight_shape = (case.replicas, *weight_shape)
            stream_shape = (case.replicas, *stream_shape)
        multiplier = scheme.multiplier
    else:
        weight_shape = (case.nodes, case.hidden, case.dim)
        stream_shape = (case.batch, case.dim)
        multiplier = scheme.multiplier * case.depth

    def draw(shape: tuple[int, ...], scale: float) -> torch.Tensor:
        sample = torch.randn(shape, generator=generator, dtype=torch.float64) * scale
        return sample.to(device=device, dtype=dtype)

    u = draw(weight_shape, scheme.init_std_u)
    v = draw(weight_shape, scheme.init_std_v)
    h0 = draw(stream_shape, 1.0)
    probe = draw(stream_shape, 1.0)
    return Inputs(h0=h0, u=u, v=v, probe=probe, multiplier=multiplier, pre_scale=scheme.pre_scale)
