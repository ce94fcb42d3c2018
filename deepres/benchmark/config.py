"""What one benchmark run measures: :class:`BenchConfig`."""

from __future__ import annotations

from dataclasses import dataclass, field

from deepres.benchmark.case import Case
from deepres.benchmark.providers import providers_for
from deepres.benchmark.runner import Provider
from deepres.benchmark.timing import TimingOptions

__all__ = ["ISOLATIONS", "BenchConfig"]

#: Values of :attr:`BenchConfig.isolation`.
ISOLATIONS: tuple[str, ...] = ("auto", "subprocess", "inprocess")


@dataclass
class BenchConfig:
    """What to run.

    Args:
        cases: the grid (all of one workload).
        providers: names to run (None: every provider of the workload). Default None.
        checkpoint_policies: ``checkpoint_every`` values of the deepres engines.
            Default ``[None, "sqrt"]``.
        timing: the repeat policy. Default :class:`TimingOptions()`.
        isolation: ``"subprocess"`` (one process per provider: CPU peak memory),
            ``"inprocess"``, or ``"auto"`` (default: subprocess on CPU, in-process on CUDA).
        provider_timeout: seconds one provider's worker may take for the whole grid.
            Default 1800.
        threads: ``torch.set_num_threads`` for the measurements (None: PyTorch's
            default, one per core). Default None.
        interleave: time all providers of a case together, in rounds of one step
            each in shuffled order (one process), after the memory measurements;
            False times each provider right after its memory step. Default True.
        excluded: provider name → why it is left out of this run (listed as
            skipped with that reason). Default empty.
        compile_backend: the ``torch.compile`` backend of the compile providers.
            Default ``"inductor"``.

    Example:
        >>> config = BenchConfig([Case(depth=4)], providers=["eager"])
        >>> config.workload, [p.name for p in config.selected_providers()]
        ('stack', ['eager'])
    """

    cases: list[Case]
    providers: list[str] | None = None
    checkpoint_policies: list[int | str | None] = field(default_factory=lambda: [None, "sqrt"])
    timing: TimingOptions = field(default_factory=TimingOptions)
    isolation: str = "auto"
    provider_timeout: float = 1800.0
    threads: int | None = None
    interleave: bool = True
    excluded: dict[str, str] = field(default_factory=dict)
    compile_backend: str = "inductor"

    def __post_init__(self) -> None:
        if not self.cases:
            raise ValueError("cases must be a non-empty list of Case")
        workloads = {case.workload for case in self.cases}
        if len(workloads) != 1:
            raise ValueError(f"all cases must share one workload; got {sorted(workloads)}")
        if self.isolation not in ISOLATIONS:
            raise ValueError(f"isolation must be one of {ISOLATIONS}; got {self.isolation!r}")

    @property
    def workload(self) -> str:
        return self.cases[0].workload

    def all_providers(self) -> list[Provider]:
        """Every provider of the workload with this run's options, baseline first."""
        return providers_for(self.workload, self.checkpoint_policies, self.compile_backend)

    def selected_providers(self) -> list[Provider]:
        """The providers this run measures (all of the workload unless ``providers`` names some)."""
        available = self.all_providers()
        if self.providers is None:
            return available
        names = [p.name for p in available]
        unknown = [name for name in self.providers if name not in names]
        if unknown:
            raise ValueError(f"providers {unknown} are not providers of the {self.workload} workload; "
                             f"choose from {names}")
        return [p for p in available if p.name in self.providers]
