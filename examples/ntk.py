"""The empirical neural tangent kernel and the linearization of a DeepResNet, with torch.func.

Θ(x, x') = J(x) J(x')ᵀ with J = ∂f/∂θ over the stack's weights θ = (u, v), computed two ways:

* from Jacobians: ``vmap(jacrev(f))`` over the inputs, one reverse pass per output entry,
  through the PyTorch engine's fused backward;
* matrix-free: Θ·e_k = J (Jᵀ e_k) by ``vjp`` then ``jvp`` (the engine's fused jvp), the
  route that scales to networks whose Jacobian does not fit in memory.

It also evaluates the linearization f_lin(θ) = f(θ₀) + J·(θ − θ₀) at a moved θ by one
``jvp`` and compares it with f(θ):

    python examples/ntk.py
    python examples/ntk.py --depth 256 --samples 8
"""

from __future__ import annotations

import argparse

import torch
from torch.func import functional_call, jacrev, jvp, vjp, vmap

import deepres


def ntk_report(depth: int = 64, samples: int = 6, dim: int = 8, hidden: int = 4, seed: int = 0,
               ) -> dict[str, float]:
    """Θ both ways, and the linearization's error at a small and at a larger step.

    Returns:
        ``kernel_gap`` ‖Θ_jacrev − Θ_jvp‖/‖Θ_jacrev‖, ``trace`` tr Θ, and ``lin_error_small``,
        ``lin_error_large``: ‖f(θ) − f_lin(θ)‖/‖f(θ) − f(θ₀)‖ at two step sizes.
    """
    torch.manual_seed(seed)
    net = deepres.DeepResNet(3, 1, depth=depth, dim=dim, hidden=hidden, dtype=torch.float64, backend="torch")
    x = torch.randn(samples, 3, dtype=torch.float64)
    theta0 = {"stack.u": net.stack.u.detach(), "stack.v": net.stack.v.detach()}

    def f(u: torch.Tensor, v: torch.Tensor, inputs: torch.Tensor = x) -> torch.Tensor:
        return functional_call(net, {"stack.u": u, "stack.v": v}, (inputs,)).squeeze(-1)

    u0, v0 = theta0["stack.u"], theta0["stack.v"]
    # Jacobian route: per sample (vmap over x), ∂f/∂(u, v) by reverse mode.
    jac_u, jac_v = vmap(jacrev(lambda u, v, xi: f(u, v, xi[None])[0], argnums=(0, 1)),
                        in_dims=(None, None, 0))(u0, v0, x)
    jac = torch.cat([jac_u.flatten(1), jac_v.flatten(1)], 1)  # (N, |θ|)
    kernel = jac @ jac.T
    # Matrix-free route: column k of Θ is J (Jᵀ e_k): one vjp, then one jvp.
    _, pullback = vjp(f, u0, v0)
    columns = [jvp(f, (u0, v0), pullback(e))[1] for e in torch.eye(samples, dtype=torch.float64)]
    kernel_mv = torch.stack(columns, 1)
    report = {"kernel_gap": float((kernel - kernel_mv).norm() / kernel.norm()),
              "trace": float(kernel.trace())}
    # Linearization: f_lin(θ₀ + δ) = f(θ₀) + J·δ, one jvp.
    f0 = f(u0, v0)
    du, dv = torch.randn_like(u0), torch.randn_like(v0)
    for name, step in (("lin_error_small", 1e-3), ("lin_error_large", 1e-1)):
        f_lin = f0 + jvp(f, (u0, v0), (step * du, step * dv))[1]
        moved = f(u0 + step * du, v0 + step * dv)
        report[name] = float((moved - f_lin).norm() / (moved - f0).norm())
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=64)
    parser.add_argument("--samples", type=int, default=6)
    args = parser.parse_args()
    report = ntk_report(depth=args.depth, samples=args.samples)
    print(f"NTK from Jacobians vs matrix-free: relative gap {report['kernel_gap']:.1e}, "
          f"trace {report['trace']:.4g}")
    print(f"linearization error, step 1e-3: {report['lin_error_small']:.1e}; step 1e-1: "
          f"{report['lin_error_large']:.1e}")


if __name__ == "__main__":
    main()
