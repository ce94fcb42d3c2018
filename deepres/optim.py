"""Parameter groups for ``torch.optim`` that carry the parameterization's scaling.

``param_groups(model, lr, optimizer=...)`` returns one group per parameter that
a deepres module scales (see :mod:`deepres.scaling`) and one group for every
other trainable parameter, with the group's ``lr``, ``weight_decay`` and (for
Adam) ``eps`` set so that any ``torch.optim`` optimizer of that family trains
the model the way the parameterization prescribes. The rules, derived in
docs/optim.md, with η the base learning rate, λ the base weight decay, P the
parameter's plain-gradient-descent lr multiplier and A its Adam multiplier:

=============  ===============  ==================  =========  ===================================
optimizer      group ``lr``     ``weight_decay``    ``eps``    what λ does
=============  ===============  ==================  =========  ===================================
``"sgd"``      η·P              λ/P                 —          every weight shrinks by η·λ per step
``"adam"``     η·A              λ·G/s (u, v), λ     ε·G        L2 penalty whose gradient is λ × the
                                                               loss's at the initial scale s
``"adamw"``    η·A              λ/A                 ε·G        every weight shrinks by η·λ per step
=============  ===============  ==================  =========  ===================================

=================================  ==================  ===============  ===================  ==========
parameter                          P (SGD)             A (Adam)         G (gradient scale)   s (init std)
=================================  ==================  ===============  ===================  ==========
u, v with ``mlu``                  L·M·D/α²            1/α              α/(L·M·D)            √D
u, v with ``depth_mup``            1                   1/(α·√(L·M))     α/(√(L·M)·D)         1
u, v with ``standard``             1                   1                1                    1/√D, 1/√M
trained embedding W_E (D, d_in)    1                   1/d_in           1                    —
trained readout W_U (D, d_out)     1                   1                1                    —
any other parameter                1                   1                1                    —
=================================  ==================  ===============  ===================  ==========

(for a :class:`deepres.MeanODE`, L and M are the steps N and particles K.)
Adam's first step moves every entry by ±η·A whatever the gradient's size, so A
is chosen for what one step does to the network: with ``mlu`` each unit's
pre-activation and the output move by O(η), whatever L, M, D. G is the size
of the parameter's gradient entries, so that ε stays below them at any size.

A parameter whose multiplier is a tensor (a rk4 :class:`deepres.MeanODE` has
one value per depth node) gets the scalar max(P) in its group and a
``"grad_scale"`` tensor P/max(P): a step hook that deepres registers with
``torch.optim`` multiplies the gradient by it for the duration of the
optimizer's ``step()`` and puts the original gradient back afterwards, so the
update is the per-node one while ``.grad`` keeps the true gradient.
"""

from __future__ import annotations

import math
import weakref
from typing import Any

import torch
from torch import nn

from deepres._checks import check_finite_real
from deepres.scaling import ScaledParameter, scaled_parameters

__all__ = ["OPTIMIZERS", "ScaledAdam", "ScaledAdamW", "ScaledSGD", "param_groups"]

#: Names accepted by the ``optimizer`` argument of :func:`param_groups`.
OPTIMIZERS: tuple[str, ...] = ("sgd", "adam", "adamw")

#: Adam's default ε in torch.optim.Adam and AdamW.
_TORCH_ADAM_EPS = 1e-8


def _check_nonnegative(value: object, name: str) -> float:
    value = check_finite_real(value, name)
    if value < 0:
        raise ValueError(f"{name} must be ≥ 0; got {value!r}")
    return value


def _sgd_multiplier(record: ScaledParameter) -> tuple[float, torch.Tensor | None]:
    """(the scalar P of the group, the gradient scale P/max(P) for a tensor multiplier, else None)."""
    multiplier = record.lr_multiplier
    if not isinstance(multiplier, torch.Tensor):
        value = float(multiplier)
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"the lr multiplier of {record.name!r} must be finite and > 0; got {value!r}")
        return value, None
    detached = multiplier.detach()
    if detached.numel() == 0 or not bool(torch.isfinite(detached).all()) or bool((detached <= 0).any()):
        raise ValueError(f"the lr multiplier of {record.name!r} must have finite entries > 0")
    top = float(detached.max())
    if detached.numel() == 1 or bool((detached == top).all()):
        return top, None
    return top, detached / top


def _adam_multiplier_and_gradient_scale(record: ScaledParameter) -> tuple[float, float]:
    """(A, G) of the table in the module docstring, G before the per-node factor."""
    if record.role in ("u", "v"):
        p = record.parameterization
        if p is None:
            raise ValueError(f"{record.name!r} has role {record.role!r} but no parameterization: "
                             f"the Adam rule of u and v needs one")
        return p.adam_multiplier, p.adam_gradient_scale
    if record.role == "embedding":
        # W_E is (D, d_in): a ±lr step on every entry moves h_0 = W_E x by lr·Σ_i |x_i| ≈ lr·d_in.
        return 1.0 / record.parameter.shape[-1], 1.0
    return 1.0, 1.0


def _init_std(record: ScaledParameter) -> float:
    """The initial standard deviation of u or v under the record's parameterization."""
    p = record.parameterization
    assert p is not None  # checked by _adam_multiplier_and_gradient_scale
    return p.init_std_u if record.role == "u" else p.init_std_v


def _group(record_names: list[str], params: list[nn.Parameter], role: str, lr: float, weight_decay: float,
           eps: float | None, grad_scale: torch.Tensor | None) -> dict[str, Any]:
    group: dict[str, Any] = {"params": params, "lr": lr, "weight_decay": weight_decay,
                             "names": record_names, "role": role}
    if eps is not None:
        group["eps"] = eps
    if grad_scale is not None:
        group["grad_scale"] = grad_scale
    return group


def param_groups(model: nn.Module, lr: float, *, optimizer: str = "sgd", weight_decay: float = 0.0,
                 eps: float = _TORCH_ADAM_EPS) -> list[dict[str, Any]]:
    """Parameter groups for ``torch.optim`` with the model's parameterization in them.

    Every group sets ``lr`` and ``weight_decay`` (and ``eps`` for Adam), so the
    optimizer's own defaults for them are not used; pass momentum, betas,
    nesterov and so on to the optimizer as usual. The rules are in the module
    docstring and derived in docs/optim.md:

    * ``"sgd"``: one ``torch.optim.SGD`` step is :func:`deepres.gradient_descent_step`
      (``w ← w − η·P·∂loss/∂w``); weight decay shrinks every parameter by η·λ
      relative per step, whatever its multiplier.
    * ``"adam"``, ``"adamw"``: u and v get η·A (η/α with ``mlu``: one step moves
      each unit's pre-activation and the output by O(η) whatever L, M, D);
      AdamW's decoupled decay shrinks every parameter by η·λ per step; Adam's
      coupled decay on u and v is the L2 penalty whose gradient is λ times the
      loss's at the weights' initial scale (unscaled λ on other parameters).

    Parameters no deepres module scales (a user's own layers, a trained
    embedding or readout under SGD) keep ``lr`` = η and ``weight_decay`` = λ.

    Args:
        model: any ``nn.Module``; the multipliers come from
            :func:`deepres.scaling.scaled_parameters` (only trainable parameters).
        lr: the base learning rate η (finite, ≥ 0).
        optimizer: the family the groups are for: ``"sgd"`` (default; SGD with or
            without momentum), ``"adam"`` or ``"adamw"``.
        weight_decay: the base weight decay λ (finite, ≥ 0). Default 0.
        eps: Adam's ε for gradients of order 1 (finite, > 0). Default 1e-8
            (torch's). Each Adam group gets ε·G, G its gradient scale (α/(L·M·D)
            for u, v with ``mlu``): a fixed ε would exceed the gradient entries of
            a large network and turn Adam into SGD. Ignored for ``"sgd"``.

    Returns:
        A list of dicts for ``torch.optim`` optimizers: one group per scaled
        parameter, then one group with all other parameters (if any). Besides
        ``params``, ``lr``, ``weight_decay`` (and ``eps``), each group has
        ``names`` (the parameters' dotted names) and ``role`` (see
        :data:`deepres.scaling.ROLES`), and ``grad_scale`` for a tensor multiplier.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``; a non-real lr, weight_decay or eps.
        ValueError: a bad ``optimizer`` name or a negative/non-finite value.

    Example:
        >>> import torch, deepres
        >>> net = deepres.DeepResNet(5, 5, depth=8, dim=4, hidden=2)   # mlu: P = L·M·D = 64
        >>> groups = deepres.param_groups(net, 0.1, weight_decay=0.01)
        >>> [(g["names"], g["lr"], g["weight_decay"]) for g in groups]
        [(['stack.u'], 6.4, 0.00015625), (['stack.v'], 6.4, 0.00015625)]
        >>> opt = torch.optim.SGD(groups, momentum=0.9)
        >>> adamw = torch.optim.AdamW(deepres.param_groups(net, 1e-3, optimizer="adamw"))
    """
    if not isinstance(optimizer, str) or optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}; got {optimizer!r}")
    lr = _check_nonnegative(lr, "lr")
    weight_decay = _check_nonnegative(weight_decay, "weight_decay")
    eps = check_finite_real(eps, "eps")
    if eps <= 0:
        raise ValueError(f"eps must be > 0; got {eps!r}")
    records = list(scaled_parameters(model))
    groups: list[dict[str, Any]] = []
    others: list[ScaledParameter] = []
    for record in records:
        if record.role == "other" and not isinstance(record.lr_multiplier, torch.Tensor) \
                and float(record.lr_multiplier) == 1.0:
            others.append(record)
            continue
        sgd, grad_scale = _sgd_multiplier(record)
        if optimizer == "sgd":
            groups.append(_group([record.name], [record.parameter], record.role, lr * sgd,
                                 weight_decay / sgd, None, grad_scale))
            continue
        adam, gradient = _adam_multiplier_and_gradient_scale(record)
        base = record.parameterization.lr_multiplier if record.parameterization is not None else sgd
        # With a per-node multiplier the optimizer sees the gradient times P/max(P), which makes
        # the nodes' gradients base/max(P) times the euler-equivalent ones.
        gradient *= base / sgd if grad_scale is not None else 1.0
        if optimizer == "adamw":
            decay = weight_decay / adam
        elif record.role in ("u", "v"):
            decay = weight_decay * gradient / _init_std(record)
        else:
            decay = weight_decay
        groups.append(_group([record.name], [record.parameter], record.role, lr * adam, decay,
                             eps * gradient, grad_scale))
    if others:
        groups.append(_group([r.name for r in others], [r.parameter for r in others], "other", lr,
                             weight_decay, None if optimizer == "sgd" else eps, None))
    if any("grad_scale" in g for g in groups):
        _install_step_hooks()
    return groups


# ----------------------------------------------------------------------------------------------
# Per-node multipliers: the gradient is scaled for the duration of the optimizer's step.

_saved_gradients: weakref.WeakKeyDictionary[torch.optim.Optimizer, list[tuple[torch.Tensor, torch.Tensor]]] \
    = weakref.WeakKeyDictionary()
_hook_handles: list[Any] = []


def _scale_gradients(optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
    scaled = [g for g in optimizer.param_groups if g.get("grad_scale") is not None]
    if not scaled:
        return
    if len(args) > 1 or kwargs.get("closure") is not None:
        raise RuntimeError("optimizer.step(closure) is not supported with per-node lr multipliers "
                           "(a group with 'grad_scale'): call backward() first, then step()")
    saved = []
    for group in scaled:
        scale = group["grad_scale"]
        for param in group["params"]:
            if param.grad is not None:
                saved.append((param, param.grad))
                param.grad = param.grad * scale.to(device=param.grad.device, dtype=param.grad.dtype)
    _saved_gradients[optimizer] = saved


def _restore_gradients(optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
    for param, grad in _saved_gradients.pop(optimizer, ()):
        param.grad = grad


def _install_step_hooks() -> None:
    """Register the global pre/post step hooks once per process."""
    if not _hook_handles:
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

        _hook_handles.append(register_optimizer_step_pre_hook(_scale_gradients))
        _hook_handles.append(register_optimizer_step_post_hook(_restore_gradients))


# ----------------------------------------------------------------------------------------------
# Thin optimizers in the style of mup's MuSGD / MuAdam: torch.optim classes built on the groups.


class ScaledSGD(torch.optim.SGD):
    """``torch.optim.SGD`` over ``param_groups(model, lr, optimizer="sgd", weight_decay=...)``.

    Args:
        model: the ``nn.Module`` to train.
        lr: base learning rate η. Default 1e-3 (torch's).
        weight_decay: base weight decay λ (shrink η·λ per step). Default 0.
        **kwargs: the other options of ``torch.optim.SGD`` (momentum, dampening,
            nesterov, maximize, foreach, ...), with their torch defaults.

    Example:
        >>> import torch, deepres
        >>> net = deepres.DeepResNet(5, 5, depth=16, dim=4, hidden=2)
        >>> opt = deepres.ScaledSGD(net, lr=0.1, momentum=0.9)
        >>> net(torch.randn(8, 5)).square().mean().backward(); opt.step()
    """

    def __init__(self, model: nn.Module, lr: float = 1e-3, *, weight_decay: float = 0.0, **kwargs: Any):
        super().__init__(param_groups(model, lr, optimizer="sgd", weight_decay=weight_decay), lr=lr,
                         **kwargs)


class ScaledAdam(torch.optim.Adam):
    """``torch.optim.Adam`` over ``param_groups(model, lr, optimizer="adam", ...)``.

    Args:
        model: the ``nn.Module`` to train.
        lr: base learning rate η. Default 1e-3 (torch's).
        weight_decay: base weight decay λ (coupled L2; see :func:`param_groups`). Default 0.
        eps: ε for gradients of order 1, scaled per group. Default 1e-8.
        **kwargs: the other options of ``torch.optim.Adam`` (betas, amsgrad, ...).

    Example:
        >>> import torch, deepres
        >>> net = deepres.DeepResNet(5, 5, depth=16, dim=4, hidden=2)
        >>> opt = deepres.ScaledAdam(net, lr=1e-2)
        >>> net(torch.randn(8, 5)).square().mean().backward(); opt.step()
    """

    def __init__(self, model: nn.Module, lr: float = 1e-3, *, weight_decay: float = 0.0,
                 eps: float = _TORCH_ADAM_EPS, **kwargs: Any):
        super().__init__(param_groups(model, lr, optimizer="adam", weight_decay=weight_decay, eps=eps),
                         lr=lr, **kwargs)


class ScaledAdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` over ``param_groups(model, lr, optimizer="adamw", ...)``.

    Args:
        model: the ``nn.Module`` to train.
        lr: base learning rate η. Default 1e-3 (torch's).
        weight_decay: base weight decay λ: every parameter shrinks by η·λ per step.
            Default 1e-2 (torch's).
        eps: ε for gradients of order 1, scaled per group. Default 1e-8.
        **kwargs: the other options of ``torch.optim.AdamW`` (betas, amsgrad, ...).

    Example:
        >>> import torch, deepres
        >>> net = deepres.DeepResNet(5, 5, depth=16, dim=4, hidden=2)
        >>> opt = deepres.ScaledAdamW(net, lr=1e-2, weight_decay=0.1)
        >>> net(torch.randn(8, 5)).square().mean().backward(); opt.step()
    """

    def __init__(self, model: nn.Module, lr: float = 1e-3, *, weight_decay: float = 1e-2,
                 eps: float = _TORCH_ADAM_EPS, **kwargs: Any):
        super().__init__(param_groups(model, lr, optimizer="adamw", weight_decay=weight_decay, eps=eps),
                         lr=lr, **kwargs)
