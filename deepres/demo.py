"""A small runnable demonstration: one training step of a deep stack with each engine.

Run it with ``deepres demo``. It builds a ``DeepResNet`` thousands of layers
deep, runs a forward and backward pass with every engine that can run here (plain
autograd, the PyTorch engine under each checkpoint policy, the Triton engine on
CUDA), checks the gradients against each other, and prints what it did: shapes,
time, and the bytes kept for the backward pass. Each engine runs one untimed
warm-up step first, so that no row carries one-time costs (allocations, kernel
compilation). An engine that cannot run here is listed with the reason.
"""

from __future__ import annotations

import time

import torch

from deepres.engines.registry import unavailable_reason
from deepres.modules import DeepResNet

__all__ = ["run_demo"]


def _saved_bytes_and_grads(net: DeepResNet, x: torch.Tensor, y: torch.Tensor):
    owned = {t.untyped_storage().data_ptr() for t in (*net.parameters(), *net.buffers(), x)}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in owned:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    net.zero_grad(set_to_none=True)
    start = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = 0.5 * (net(x) - y).pow(2).sum(-1).mean()
    loss.backward()
    elapsed = time.perf_counter() - start
    return loss.item(), elapsed, sum(saved.values()), net.stack.u.grad.clone()


def _triton_skip_reason(device: torch.device) -> str | None:
    reason = unavailable_reason("triton", device)
    if reason is None and device.type != "cuda":
        return "Triton's interpreter on the CPU is far too slow for a timing demo"
    return reason


def run_demo(depth: int = 2048, dim: int = 16, hidden: int = 16, batch: int = 64, seed: int = 0,
             device: str = "cpu", dtype: torch.dtype = torch.float32) -> dict[str, dict[str, object]]:
    """Train-step a deep stack with every engine and memory policy and print a summary.

    Args:
        depth, dim, hidden, batch: L, D, M and B. Defaults 2048, 16, 16, 64.
        seed: seed of the weights and the data. Default 0.
        device, dtype: where and in which precision to run. Defaults CPU, float32.

    Returns:
        For each engine and policy: loss, seconds (of the step after the warm-up one),
        saved bytes, and the gradient's relative difference to plain autograd; for an
        engine skipped here, ``{"skipped": reason}``.

    Example:
        >>> results = run_demo(depth=4, dim=2, hidden=2, batch=2)  # doctest: +ELLIPSIS
        deepres demo: ...
        >>> results["plain autograd"]["grad_rel_diff"]
        0.0
    """
    generator = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(batch, 5, generator=generator, dtype=dtype).to(device)
    y = torch.randn(batch, 5, generator=generator, dtype=dtype).to(device)
    print(f"deepres demo: DeepResNet with L={depth} residual blocks, M={hidden} units each, "
          f"D={dim}, batch {batch}, {dtype}, {device}")
    results: dict[str, dict[str, object]] = {}
    reference_grad = None
    policies = [("reference", None), ("torch", None), ("torch", "sqrt")]
    triton_reason = _triton_skip_reason(torch.device(device))
    if triton_reason is None:
        policies.append(("triton", None))
    for backend, every in policies:
        net = DeepResNet(5, 5, depth, dim, hidden, backend=backend, checkpoint_every=every,
                         generator=torch.Generator().manual_seed(seed), dtype=dtype).to(device)
        _saved_bytes_and_grads(net, x, y)  # warm-up: allocations, kernel compilation, caches
        loss, seconds, saved, grad = _saved_bytes_and_grads(net, x, y)
        if reference_grad is None:
            reference_grad = grad
        difference = ((grad - reference_grad).norm() / reference_grad.norm()).item()
        label = f"{backend} (checkpoint_every={every})" if backend != "reference" else "plain autograd"
        results[label] = {"loss": loss, "seconds": seconds, "saved_bytes": float(saved),
                          "grad_rel_diff": difference}
        print(f"  {label:36s} loss {loss:.6f}  forward+backward {seconds:6.3f} s  "
              f"kept for backward {saved / 2**20:8.2f} MiB  grad rel. diff {difference:.1e}")
    if triton_reason is not None:
        results["triton"] = {"skipped": triton_reason}
        print(f"  {'triton':36s} skipped: {triton_reason}")
    print("  (each row: the second step; the first, untimed, warmed the engine up)")
    return results
