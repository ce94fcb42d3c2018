"""Full-batch gradient descent with the parameterization's learning-rate multipliers.

The convention, shared by every model of deepres: a module that owns trained
weights ``u`` and ``v`` carries an attribute ``lr_multiplier`` (a float, or a
tensor that broadcasts against ``u``, e.g. one value per depth node of a
MeanODE). One step updates each trained weight w by

    w ← w − η · lr_multiplier · ∂loss/∂w,

where the multiplier is that of the module owning w, and 1 for trained
weights of modules without one (a trained embedding or readout).

:func:`train` runs that step in a full-batch loop and records what the studies
need. ``deepres.train`` is :func:`train`, exported from the package.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from deepres._checks import check_finite_real, check_tensor

__all__ = ["TrainResult", "gradient_descent_step", "lr_multipliers", "train"]


#: Names of the weights a module's ``lr_multiplier`` applies to.
SCALED_WEIGHTS = ("u", "v")


def lr_multipliers(model: nn.Module) -> Iterator[tuple[str, nn.Parameter, float | torch.Tensor]]:
    """Yield (name, parameter, lr multiplier) for every trainable parameter of ``model``.

    A parameter named ``u`` or ``v`` gets the ``lr_multiplier`` of the module that
    owns it; every other trainable parameter (a trained embedding or readout, even
    on a module that has an ``lr_multiplier`` of its own) gets 1.
    """
    for module_name, module in model.named_modules():
        multiplier = getattr(module, "lr_multiplier", None)
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            full = f"{module_name}.{name}" if module_name else name
            scaled = multiplier is not None and name in SCALED_WEIGHTS
            yield full, param, (multiplier if scaled else 1.0)


@torch.no_grad()
def gradient_descent_step(model: nn.Module, eta: float) -> None:
    """Apply ``w ← w − η · lr_multiplier · w.grad`` to every parameter that has a gradient.

    Args:
        model: the module whose ``.grad`` fields were filled by ``backward()``.
        eta: the base learning rate η.
    """
    for _, param, multiplier in lr_multipliers(model):
        if param.grad is None:
            continue
        if isinstance(multiplier, torch.Tensor):
            param.sub_(param.grad * multiplier.to(param.device, param.dtype), alpha=eta)
        else:
            param.sub_(param.grad, alpha=eta * multiplier)


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        outputs: the model's output after the last step, the shape of ``model(x)``:
            (N, d_out), or (R, N, d_out) for a model with R replicas.
        record_steps: the steps k (number of GD steps done, 0 = initialization) at
            which outputs and features were recorded, increasing.
        recorded_outputs: f at those steps, (S, *outputs.shape).
        recorded_features: the final embedding h_L (or h(1) for a MeanODENet) at
            those steps, (S, N, D) or (S, R, N, D); ``None`` when the model has no
            ``features`` method or ``record_features=False``.
        losses: ½·mean over samples of ‖f − y‖² before each step and after the last,
            (steps + 1,) or (steps + 1, R).
        nonfinite: bool mask, () or (R,): the replicas whose loss, outputs or
            weights became non-finite. Such a replica is frozen at the step it
            failed (its gradient is dropped), and its outputs are kept as they are
            (non-finite): callers must exclude it with this mask, never average it in.
        nonfinite_step: the first step at which each replica was found non-finite,
            −1 for those that never were; same shape as ``nonfinite``.
    """

    outputs: torch.Tensor
    record_steps: tuple[int, ...]
    recorded_outputs: torch.Tensor
    recorded_features: torch.Tensor | None
    losses: torch.Tensor
    nonfinite: torch.Tensor
    nonfinite_step: torch.Tensor

    @property
    def nonfinite_count(self) -> int:
        """How many replicas became non-finite."""
        return int(self.nonfinite.sum().item())


def _check_record_steps(record_steps: object, steps: int) -> tuple[int, ...]:
    if record_steps is None:
        return (steps,)
    if isinstance(record_steps, str) and record_steps == "all":
        return tuple(range(steps + 1))
    try:
        values = sorted({int(k) for k in record_steps})  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise TypeError(
            f"record_steps must be None, 'all' or an iterable of ints in [0, {steps}]; "
            f"got {record_steps!r}"
        ) from None
    if not values or values[0] < 0 or values[-1] > steps:
        raise ValueError(f"record_steps must be ints in [0, {steps}]; got {record_steps!r}")
    return tuple(values)


def _forward(model: nn.Module, x: torch.Tensor, with_features: bool,
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """f(x) and, when available, h_L; one forward pass when the model splits into features + readout."""
    if with_features and hasattr(model, "readout") and callable(model.readout):
        features = model.features(x)
        return model.readout(features), features
    outputs = model(x)
    if with_features:
        with torch.no_grad():
            return outputs, model.features(x)
    return outputs, None


def _replica_losses(outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """½·mean over samples of ‖f − y‖²: () for (N, d_out) outputs, (R,) for (R, N, d_out)."""
    return 0.5 * (outputs - y).pow(2).sum(-1).mean(-1)


def train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int,
    eta: float,
    record_steps: Iterable[int] | str | None = None,
    record_features: bool = True,
    progress: bool | Callable[[int], None] = False,
) -> TrainResult:
    """Full-batch gradient descent for a fixed number of steps, with the lr multipliers.

    Each step computes the loss ½·mean over samples of ‖f(x) − y‖² (per replica;
    replicas are independent networks, so the per-replica losses are summed for the
    backward pass, which gives every replica its own gradient), then applies
    :func:`gradient_descent_step` (w ← w − η · lr_multiplier · ∂loss/∂w). Works for
    any module whose output is (N, d_out) or (R, N, d_out): :class:`deepres.DeepResNet`
    (with or without replicas) and the limit ``MeanODENet``.

    Args:
        model: the network, trained in place.
        x: inputs, (N, d_in). y: targets, (N, d_out), shared by every replica.
        steps: number K of GD steps (≥ 0).
        eta: base learning rate η (finite, > 0).
        record_steps: steps at which to record f and h_L; k means after k steps
            (0 = initialization). ``None`` (default): only the last step;
            ``"all"``: every step.
        record_features: also record the final embedding h_L (needs
            ``model.features``). Default True.
        progress: False (default), True for a tqdm bar, or a callable called with
            the number of steps done after each step.

    Returns:
        A :class:`TrainResult`.

    Example:
        >>> import torch, deepres
        >>> from deepres.train import train
        >>> net = deepres.DeepResNet(5, 5, depth=16, dim=4, hidden=2, replicas=3)
        >>> x, y = torch.randn(10, 5), torch.randn(10, 5)
        >>> result = train(net, x, y, steps=5, eta=0.1, record_steps=[0, 5])
        >>> result.outputs.shape, result.recorded_outputs.shape, result.losses.shape
        (torch.Size([3, 10, 5]), torch.Size([2, 3, 10, 5]), torch.Size([6, 3]))
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int ≥ 0; got {steps!r}")
    eta = check_finite_real(eta, "eta")
    if eta <= 0:
        raise ValueError(f"eta must be > 0; got {eta!r}")
    x = check_tensor(x, "x")
    y = check_tensor(y, "y")
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"x and y must have shapes (N, d_in) and (N, d_out) with the same N; "
            f"got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    wanted = _check_record_steps(record_steps, steps)
    with_features = record_features and hasattr(model, "features")
    callback = progress if callable(progress) else None
    bar = None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="train", leave=False)

    trained = [p for _, p, _ in lr_multipliers(model)]
    recorded_f: list[torch.Tensor] = []
    recorded_h: list[torch.Tensor] = []
    losses: list[torch.Tensor] = []
    nonfinite: torch.Tensor | None = None
    first_bad: torch.Tensor | None = None
    outputs = None
    for step in range(steps + 1):
        last = step == steps
        for p in trained:
            p.grad = None
        with torch.set_grad_enabled(not last):
            outputs, features = _forward(model, x, with_features and step in wanted)
            per_replica = _replica_losses(outputs, y)
        bad = ~torch.isfinite(per_replica.detach())
        # A replica whose output is non-finite in any entry is bad even if the loss
        # overflowed to a finite value somewhere else.
        bad |= ~torch.isfinite(outputs.detach()).flatten(start_dim=outputs.dim() - 2).all(-1)
        if nonfinite is None:
            nonfinite = torch.zeros_like(bad)
            first_bad = torch.full(bad.shape, -1, dtype=torch.long, device=bad.device)
        newly = bad & ~nonfinite
        first_bad = torch.where(newly, torch.full_like(first_bad, step), first_bad)
        nonfinite = nonfinite | bad
        losses.append(per_replica.detach().clone())
        if step in wanted:
            recorded_f.append(outputs.detach().clone())
            if features is not None:
                recorded_h.append(features.detach().clone())
        if last:
            break
        # Replicas are independent, so the sum's gradient is each replica's own gradient;
        # frozen (non-finite) replicas are left out so that NaN never enters a backward.
        total = torch.where(nonfinite, torch.zeros_like(per_replica), per_replica).sum()
        if bool((~nonfinite).any()):
            total.backward()
            _drop_frozen_gradients(model, nonfinite)
            gradient_descent_step(model, eta)
        if callback is not None:
            callback(step + 1)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    assert outputs is not None and nonfinite is not None and first_bad is not None
    return TrainResult(
        outputs=outputs.detach(),
        record_steps=wanted,
        recorded_outputs=torch.stack(recorded_f),
        recorded_features=torch.stack(recorded_h) if recorded_h else None,
        losses=torch.stack(losses),
        nonfinite=nonfinite,
        nonfinite_step=first_bad,
    )


def _drop_frozen_gradients(model: nn.Module, frozen: torch.Tensor) -> None:
    """Zero the gradient of frozen replicas: the leading axis of a replicated weight is the replica."""
    if frozen.dim() == 0:
        return
    if not bool(frozen.any()):
        return
    replicas = frozen.shape[0]
    for _, p, _ in lr_multipliers(model):
        if p.grad is not None and p.dim() >= 1 and p.shape[0] == replicas and p.dim() == 4:
            p.grad[frozen] = 0.0
