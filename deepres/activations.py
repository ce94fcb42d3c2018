"""Activations σ of the residual blocks and their derivatives σ'.

The engines need σ(z) in the forward pass and both σ(z) and σ'(z) when they
recompute a layer in the backward pass, so each activation is given as a pair
of functions. They work on any floating dtype and device.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from deepres._checks import check_choice

__all__ = ["ACTIVATIONS", "TORCH_ACTIVATIONS", "activation", "activation_and_derivative", "activation_vjp",
           "check_activation"]

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


# NOTE: below this many elements torch.tanh's fixed cost wins: 3.1 µs against 7.4 µs for the
# sigmoid form at 64×16 (one thread of the 2-core EPYC); the crossover is near 4096.
_SIGMOID_TANH_MIN_NUMEL = 4096


def _tanh(z: torch.Tensor) -> torch.Tensor:
    if z.device.type == "cpu" and z.numel() >= _SIGMOID_TANH_MIN_NUMEL:
        # NOTE: on the CPU build of torch 2.13, torch.tanh is not vectorized: measured on one
        # thread of a 2-core EPYC, 68 µs for a (256, 128) float32 tensor against 18 µs for
        # tanh(z) = 2·sigmoid(2z) − 1 (and 347 µs against 136 µs at (10, 16384)). The
        # identity costs an absolute rounding error of a few ulps of 1, like tanh's own.
        s = torch.sigmoid(z * 2.0)
        if torch.is_grad_enabled() and z.requires_grad:  # autograd needs sigmoid's output intact
            return s * 2.0 - 1.0
        return s.mul_(2.0).sub_(1.0)
    return torch.tanh(z)


def _tanh_pair(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    s = _tanh(z)
    return s, 1.0 - s * s  # tanh' = 1 − tanh²


def _relu_pair(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    positive = z > 0
    return torch.where(positive, z, torch.zeros_like(z)), positive.to(z.dtype)


def _gelu_pair(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # Exact (erf) GELU: σ(z) = z Φ(z), σ'(z) = Φ(z) + z φ(z).
    cdf = 0.5 * (1.0 + torch.erf(z * _INV_SQRT2))
    pdf = torch.exp(-0.5 * z * z) * _INV_SQRT_2PI
    return z * cdf, cdf + z * pdf


def _silu_pair(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # σ(z) = z·sig(z), σ'(z) = sig(z)·(1 + z·(1 − sig(z))).
    sig = torch.sigmoid(z)
    return z * sig, sig * (1.0 + z * (1.0 - sig))


def _identity_pair(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return z, torch.ones_like(z)


_FORWARD: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "tanh": _tanh,
    "relu": torch.relu,
    "gelu": lambda z: torch.nn.functional.gelu(z, approximate="none"),
    "silu": torch.nn.functional.silu,
    "identity": lambda z: z,
}

_PAIR: dict[str, Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]] = {
    "tanh": _tanh_pair,
    "relu": _relu_pair,
    "gelu": _gelu_pair,
    "silu": _silu_pair,
    "identity": _identity_pair,
}

#: Names accepted wherever an ``activation`` argument is taken.
ACTIVATIONS: tuple[str, ...] = tuple(_FORWARD)

#: σ written with PyTorch's own functions, name by name: what a user writes. The plain
#: references and the benchmark baselines use these, never the engines' faster forms
#: (e.g. tanh through sigmoid on the CPU), so that they stay independent oracles.
TORCH_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "tanh": torch.tanh,
    "relu": torch.relu,
    "gelu": lambda z: torch.nn.functional.gelu(z, approximate="none"),
    "silu": torch.nn.functional.silu,
    "identity": lambda z: z,
}


def check_activation(name: object, argument: str = "activation") -> str:
    """Return ``name`` if it names a supported activation, else raise (see
    :func:`deepres._checks.check_choice`: TypeError for a non-str, ValueError
    for a name not in :data:`ACTIVATIONS`)."""
    return check_choice(name, argument, ACTIVATIONS)


def activation(name: str, z: torch.Tensor) -> torch.Tensor:
    """σ(z) for the activation called ``name`` (elementwise)."""
    return _FORWARD[name](z)


def activation_and_derivative(name: str, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(σ(z), σ'(z)) for the activation called ``name`` (elementwise, fresh tensors)."""
    return _PAIR[name](z)


# σ'(z) ⊙ q in one fused ATen op each (the kernels autograd itself runs): one pass over the
# M-wide tensors instead of the two or three that forming σ'(z) and multiplying take.
_VJP: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "tanh": lambda q, z, s: torch.ops.aten.tanh_backward(q, s),
    "relu": lambda q, z, s: torch.ops.aten.threshold_backward(q, z, 0.0),
    "gelu": lambda q, z, s: torch.ops.aten.gelu_backward(q, z, approximate="none"),
    "silu": lambda q, z, s: torch.ops.aten.silu_backward(q, z),
    "identity": lambda q, z, s: q,
}


def activation_vjp(name: str, q: torch.Tensor, z: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """σ'(z) ⊙ q for the activation called ``name``, given z and s = σ(z) (a fresh tensor
    except for ``"identity"``, which returns ``q`` itself)."""
    return _VJP[name](q, z, s)
