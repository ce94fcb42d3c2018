"""float32 accuracy of the C++ and PyTorch CPU engines against the float64 reference, same inputs.

    python bench/cpp_accuracy.py [--out bench/results/cpp_accuracy_cpu.json]

For every activation: the relative error ‖out − ref‖/‖ref‖ of h_L and of the three gradients
(h_0, u, v) of ⟨w, h_L⟩, the reference being the plain per-layer loop in float64 on the float32
inputs' values (L 1024, B 64, D 16, M 16, the mlu scaling with α = 2, k = 1 and k = "sqrt").
Also the float32 tanh approximation's maximum absolute and relative error against float64 tanh
on every float32 in [−10, 10] spaced 2⁻¹⁶ (and the relative error on [−1e-3, 1e-3]).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from deepres import ACTIVATIONS, residual_stack
from deepres.benchmark.environment import environment
from deepres.engines.cpp_build import cpp_module
from deepres.engines.cpp_engine import ACTIVATION_CODES
from deepres.engines.reference import reference_residual_stack


def _relative(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref).norm() / ref.norm()).item()


def stack_errors(depth: int = 1024, batch: int = 64, dim: int = 16, hidden: int = 16) -> dict[str, object]:
    generator = torch.Generator().manual_seed(0)
    h = torch.randn(batch, dim, generator=generator)
    u = torch.randn(depth, hidden, dim, generator=generator) * dim**0.5
    v = torch.randn(depth, hidden, dim, generator=generator) * dim**0.5
    w = torch.randn(batch, dim, generator=generator)
    c, a = 2.0 / (depth * hidden), 1.0 / dim
    rows: dict[str, object] = {}
    for activation in ACTIVATIONS:
        inputs64 = [t.double().requires_grad_() for t in (h, u, v)]
        ref = reference_residual_stack(*inputs64, c, a, activation)
        wanted = [ref.detach(), *torch.autograd.grad((ref * w.double()).sum(), inputs64)]
        for backend in ("cpp", "torch"):
            for every in (None, "sqrt"):
                inputs = [t.clone().requires_grad_() for t in (h, u, v)]
                out = residual_stack(*inputs, multiplier=c, pre_scale=a, activation=activation,
                                     backend=backend, checkpoint_every=every)
                got = [out.detach(), *torch.autograd.grad((out * w).sum(), inputs)]
                names = ("h_L", "dh0", "du", "dv")
                rows[f"{activation}/{backend}/{every}"] = {
                    name: _relative(g, r) for name, g, r in zip(names, got, wanted, strict=True)}
    return rows


def tanh_errors() -> dict[str, float]:
    grid = torch.arange(-10 * 2**16, 10 * 2**16 + 1, dtype=torch.float64) / 2**16
    approx = cpp_module().activation(grid.float(), ACTIVATION_CODES["tanh"]).double()
    exact = torch.tanh(grid.float().double())
    small = grid.abs() <= 1e-3
    nonzero = exact != 0
    return {
        "max_abs_error": (approx - exact).abs().max().item(),
        "max_rel_error": ((approx - exact).abs()[nonzero] / exact.abs()[nonzero]).max().item(),
        "max_rel_error_small": ((approx - exact).abs()[small & nonzero]
                                / exact.abs()[small & nonzero]).max().item(),
        "float32_ulp_at_1": 2.0**-23,
        "torch_tanh_float32_max_abs_error": (torch.tanh(grid.float()).double() - exact).abs().max().item(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = {"environment": environment(), "tanh": tanh_errors(), "stack": stack_errors()}
    print(json.dumps(result["tanh"], indent=1))
    for key, errors in result["stack"].items():
        print(f"{key:>24}: " + "  ".join(f"{name} {value:.1e}" for name, value in errors.items()))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
