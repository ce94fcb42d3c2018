"""Named measurements of ``deepres bench`` (``--preset NAME``) and the defaults under them.

An option's value comes from, in order of precedence: the command line, the
preset, ``--quick``, the workload's defaults, the general defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["DEFAULTS", "GENERAL", "PRESETS", "QUICK", "QUICK_EXCLUDED", "QUICK_TIMING", "Preset"]


@dataclass(frozen=True)
class Preset:
    """Defaults of a named measurement; options given on the command line override them."""

    description: str
    values: dict[str, object] = field(default_factory=dict)


def _stack(providers: list[str] | None, depths: list[int], batch: int, dim: int, hidden: int,
           **more: object) -> dict[str, object]:
    values: dict[str, object] = {"workload": "stack", "mode": "train", "depths": depths, "batch": [batch],
                                 "dims": [dim], "hidden": [hidden], **more}
    if providers is not None:
        values["providers"] = providers
    return values


_ENGINE_VS_REFERENCE = ["eager", "reference", "deepres-torch", "deepres-torch-sqrt"]

#: Named measurements (``--preset NAME``).
PRESETS: dict[str, Preset] = {
    "engine-vs-reference": Preset(
        "the PyTorch engine against the plain reference, training step, L=2048 B=256 D=32 M=128",
        _stack(_ENGINE_VS_REFERENCE, [2048], 256, 32, 128)),
    "engine-vs-reference-overhead": Preset(
        "the same where per-layer overhead dominates: L=2048 B=64 D=M=16",
        _stack(_ENGINE_VS_REFERENCE, [2048], 64, 16, 16)),
    "all-providers": Preset(
        "every provider, training step, L=4096 B=64 D=16 M=64",
        _stack(None, [4096], 64, 16, 64)),
    "compiled": Preset(
        "torch.compile of the deepres module against the module itself and eager: compile time of the "
        "first step and time per step, L=4096 B=64 D=16 M=64",
        _stack(["eager", "deepres-torch", "deepres-compiled"], [4096], 64, 16, 64, checkpoint_every=[None])),
    "growth": Preset(
        "growth in L of time and memory, L=512..4096 B=64 D=16 M=64",
        _stack([*_ENGINE_VS_REFERENCE, "eager-checkpoint"], [512, 1024, 2048, 4096], 64, 16, 64)),
    "replicas": Preset(
        "one replica launch of R=32 networks vs 32 looped models, L=1024 B=64 D=16 M=64",
        _stack(["eager", "deepres-torch", "deepres-torch-loop"], [1024], 64, 16, 64, replicas=[32],
               checkpoint_every=[None])),
    "meanode": Preset(
        "MeanODE forward+gradient: K=16384 particles, D=8, 10 samples, 64 rk4 steps",
        {"workload": "meanode", "mode": "train", "depths": [64], "batch": [10], "dims": [8],
         "hidden": [16384]}),
    "gpu": Preset(
        "CUDA check of the Triton engine against the PyTorch engine and the eager module",
        _stack(["eager", "deepres-torch", "deepres-torch-sqrt", "deepres-triton", "deepres-triton-sqrt",
                "compile", "compile-reduce-overhead"], [1024, 4096], 256, 64, 64, device="cuda")),
}

#: Grid defaults per workload.
DEFAULTS: dict[str, dict[str, object]] = {
    "stack": {"depths": [256, 1024], "batch": [64], "dims": [16], "hidden": [64]},
    "meanode": {"depths": [16, 64], "batch": [10], "dims": [8], "hidden": [4096]},
}
#: The grid of ``--quick`` per workload.
QUICK: dict[str, dict[str, object]] = {
    "stack": {"depths": [64, 256], "batch": [32], "dims": [16], "hidden": [32]},
    "meanode": {"depths": [8, 16], "batch": [10], "dims": [8], "hidden": [1024]},
}
#: Defaults of every other option.
GENERAL: dict[str, object] = {
    "workload": "stack", "mode": "train", "device": "cpu", "dtype": "float32", "replicas": [1],
    "activation": ["tanh"], "checkpoint_every": [None, "sqrt"], "providers": None, "alpha": 1.0, "seed": 0,
    "warmup": 1, "min_repeats": 3, "max_repeats": 20, "min_time": 1.0, "max_time": 30.0,
    "isolation": "auto", "provider_timeout": 1800.0, "threads": None, "interleave": True,
    "compile_backend": "inductor",
}
#: The repeat policy of ``--quick``.
QUICK_TIMING: dict[str, object] = {"min_repeats": 2, "max_repeats": 5, "min_time": 0.1, "max_time": 2.0}

# NOTE: torch.compile of one block takes about 20 s on the 2-core CPU, once in the memory
# process and again in the timing process: alone more than the minute --quick aims at; the
# deepres module under torch.compile took 24 s to its first step at L=16 and 43 s at L=64
# (cold caches, bench/results/compiled_cpu.json).
#: Providers ``--quick`` leaves out unless named in ``--providers``, with the reason.
QUICK_EXCLUDED: dict[str, str] = {
    name: "left out of --quick: torch.compile takes ~20 s or more per process on a small CPU; run "
          "without --quick or name it in --providers"
    for name in ("compile", "compile-reduce-overhead", "deepres-compiled")
}
