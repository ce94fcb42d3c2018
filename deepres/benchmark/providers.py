"""The registry of benchmark providers: every way of running the same model on the same inputs.

The providers of each workload are defined in :mod:`deepres.benchmark.stack_providers`
(with the ``torch.compile`` ones in :mod:`deepres.benchmark.compiled_providers`) and
:mod:`deepres.benchmark.meanode_providers`; what a provider is, in
:mod:`deepres.benchmark.runner`. Here: the list for a workload, and its baseline.
"""

from __future__ import annotations

from collections.abc import Sequence

from deepres.benchmark.case import WORKLOADS
from deepres.benchmark.meanode_providers import meanode_providers
from deepres.benchmark.runner import Provider
from deepres.benchmark.stack_providers import stack_providers

__all__ = ["baseline_provider", "meanode_providers", "providers_for", "stack_providers"]


def providers_for(workload: str, checkpoint_policies: Sequence[int | str | None] = (None, "sqrt"),
                  compile_backend: str = "inductor") -> list[Provider]:
    """All providers of ``workload`` (``"stack"`` or ``"meanode"``), baseline first.

    Args:
        workload: ``"stack"`` or ``"meanode"``.
        checkpoint_policies: ``checkpoint_every`` values of the deepres stack engines.
            Default ``(None, "sqrt")``.
        compile_backend: ``torch.compile`` backend of the compile providers. Default ``"inductor"``.

    Example:
        >>> providers_for("meanode")[0].name == baseline_provider("meanode")
        True
    """
    if workload == "stack":
        return stack_providers(checkpoint_policies, compile_backend)
    if workload == "meanode":
        return meanode_providers()
    raise ValueError(f"workload must be one of {WORKLOADS}; got {workload!r}")


def baseline_provider(workload: str) -> str:
    """The provider the ratios are taken against: ``eager`` (stack), ``autograd-rk4`` (meanode)."""
    return "eager" if workload == "stack" else "autograd-rk4"
