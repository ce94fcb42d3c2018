"""Parameterizations: initialization, pre-activation scale, residual multiplier, lr multiplier.

A residual block (docs/design.md §1) is ``h ← h + c · Σ_j v_j σ(a · u_jᵀ h)``. A
*parameterization* fixes, as functions of the depth L, the hidden width M, the
embedding dimension D and the scale α:

==============  =================  ==============  ================  ================  ==============
name            std of u           std of v        a (pre_scale)     c (multiplier)    lr multiplier
==============  =================  ==============  ================  ================  ==============
``mlu``         √D                 √D              1/D               α/(L·M)           L·M·D/α²
``depth_mup``   1                  1               1/√D              α/√(L·M)          1
``standard``    1/√D               1/√M            1                 1                 1
==============  =================  ==============  ================  ================  ==============

* ``mlu`` — maximal local updates (Chizat 2025, arXiv:2509.10167; Chaintron,
  Chizat & Maass 2026, arXiv:2603.18168). Every unit moves by O(1) per
  gradient step whatever L, M, D, which makes the infinite-depth limit (the
  Neural Mean ODE) non-trivial. With α ≫ 1 the same formulas give the lazy
  regime (weights move O(1/α)).
* ``depth_mup`` — the 1/√L branch scaling of Depth-μP (Yang, Yu, Zhu & Hayou
  2023, "Tensor Programs VI", arXiv:2310.02244; Bordelon, Noci, Li, Hanin &
  Pehlevan 2023, arXiv:2309.16620), here with a 1/√M width average inside the
  block and unit-variance weights, so that each block adds O(α/√L) per
  coordinate at initialization. Plain SGD with a depth-independent learning
  rate (lr multiplier 1), as in those papers.
* ``standard`` — the un-scaled ResNet of He, Zhang, Ren & Sun 2016
  (arXiv:1512.03385) with PyTorch's fan-in initialization: c = a = 1, u with
  fan-in D, v with fan-in M, no lr scaling. α is ignored. Its forward pass
  grows with L; it is there for comparison.

The gradient-descent step for every trained weight is
``w ← w − η · lr_multiplier · ∂loss/∂w``. The same table holds Adam's multiplier
A and gradient scale G of u and v (derived in docs/optim.md, used by
:mod:`deepres.optim`): 1/α and α/(L·M·D) with ``mlu``, 1/(α·√(L·M)) and
α/(√(L·M)·D) with ``depth_mup``, 1 and 1 with ``standard``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from deepres._checks import check_choice, check_finite_real, check_positive_int

__all__ = ["PARAMETERIZATIONS", "Parameterization"]

#: Names accepted wherever a ``parameterization`` argument is taken.
PARAMETERIZATIONS: tuple[str, ...] = ("mlu", "depth_mup", "standard")


# The table of the module docstring: name → quantity → (L, M, D, α) ↦ value.
_FORMULAS: dict[str, dict[str, Callable[[int, int, int, float], float]]] = {
    "mlu": {
        "init_std_u": lambda L, M, D, alpha: math.sqrt(D),
        "init_std_v": lambda L, M, D, alpha: math.sqrt(D),
        "pre_scale": lambda L, M, D, alpha: 1.0 / D,
        "multiplier": lambda L, M, D, alpha: alpha / (L * M),
        "lr_multiplier": lambda L, M, D, alpha: L * M * D / alpha**2,
        "adam_multiplier": lambda L, M, D, alpha: 1.0 / alpha,
        "adam_gradient_scale": lambda L, M, D, alpha: alpha / (L * M * D),
    },
    "depth_mup": {
        "init_std_u": lambda L, M, D, alpha: 1.0,
        "init_std_v": lambda L, M, D, alpha: 1.0,
        "pre_scale": lambda L, M, D, alpha: 1.0 / math.sqrt(D),
        "multiplier": lambda L, M, D, alpha: alpha / math.sqrt(L * M),
        "lr_multiplier": lambda L, M, D, alpha: 1.0,
        "adam_multiplier": lambda L, M, D, alpha: 1.0 / (alpha * math.sqrt(L * M)),
        "adam_gradient_scale": lambda L, M, D, alpha: alpha / (math.sqrt(L * M) * D),
    },
    "standard": {
        "init_std_u": lambda L, M, D, alpha: 1.0 / math.sqrt(D),
        "init_std_v": lambda L, M, D, alpha: 1.0 / math.sqrt(M),
        "pre_scale": lambda L, M, D, alpha: 1.0,
        "multiplier": lambda L, M, D, alpha: 1.0,
        "lr_multiplier": lambda L, M, D, alpha: 1.0,
        "adam_multiplier": lambda L, M, D, alpha: 1.0,
        "adam_gradient_scale": lambda L, M, D, alpha: 1.0,
    },
}


@dataclass(frozen=True)
class Parameterization:
    """The four quantities of a parameterization for one (L, M, D, α).

    Args:
        name: one of :data:`PARAMETERIZATIONS`. Default ``"mlu"``.
        depth: number of residual blocks L (≥ 1).
        hidden: units per block M (≥ 1).
        dim: embedding dimension D (≥ 1).
        alpha: scale α (finite, > 0). Default 1.0.

    Example:
        >>> p = Parameterization("mlu", depth=64, hidden=4, dim=8, alpha=1.0)
        >>> p.multiplier, p.pre_scale, p.lr_multiplier
        (0.00390625, 0.125, 2048.0)
    """

    name: str = "mlu"
    depth: int = 1
    hidden: int = 1
    dim: int = 1
    alpha: float = 1.0

    def __post_init__(self) -> None:
        check_choice(self.name, "parameterization", PARAMETERIZATIONS)
        check_positive_int(self.depth, "depth")
        check_positive_int(self.hidden, "hidden")
        check_positive_int(self.dim, "dim")
        alpha = check_finite_real(self.alpha, "alpha")
        if alpha <= 0:
            raise ValueError(f"alpha must be > 0; got {alpha!r}")
        object.__setattr__(self, "alpha", float(alpha))

    def _formula(self, quantity: str) -> float:
        return float(_FORMULAS[self.name][quantity](self.depth, self.hidden, self.dim, self.alpha))

    @property
    def init_std_u(self) -> float:
        """Standard deviation of each entry of u at initialization."""
        return self._formula("init_std_u")

    @property
    def init_std_v(self) -> float:
        """Standard deviation of each entry of v at initialization."""
        return self._formula("init_std_v")

    @property
    def pre_scale(self) -> float:
        """The pre-activation scale a in σ(a·uᵀh)."""
        return self._formula("pre_scale")

    @property
    def multiplier(self) -> float:
        """The residual multiplier c."""
        return self._formula("multiplier")

    @property
    def lr_multiplier(self) -> float:
        """Factor applied to the base learning rate η for u and v."""
        return self._formula("lr_multiplier")

    @property
    def adam_multiplier(self) -> float:
        """A: factor on Adam's learning rate for u and v (the rules of :mod:`deepres.optim`)."""
        return self._formula("adam_multiplier")

    @property
    def adam_gradient_scale(self) -> float:
        """G: the size of u's and v's gradient entries, which Adam's ε is scaled by (:mod:`deepres.optim`)."""
        return self._formula("adam_gradient_scale")
