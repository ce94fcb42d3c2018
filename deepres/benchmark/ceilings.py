"""Measured ceilings of a device: what achieved GB/s and TFLOP/s are compared against."""

from __future__ import annotations

import torch

from deepres.benchmark.timing import TimingOptions, time_step

__all__ = ["measure_ceilings"]

_OPTIONS = TimingOptions(warmup=2, min_repeats=5, max_repeats=20, min_time=0.2, max_time=2.0)


def _matmul_tflops(a: torch.Tensor, b: torch.Tensor) -> float:
    n = a.shape[0]
    return 2 * n**3 / time_step(lambda: a @ b, a.device, _OPTIONS).median / 1e12


def _copy_gbytes_per_s(numel: int, device: torch.device) -> float:
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    copy = time_step(lambda: dst.copy_(src), device, _OPTIONS).median
    return 2 * src.numel() * src.element_size() / copy / 1e9


def measure_ceilings(device: str, dtype: torch.dtype = torch.float32, quick: bool = False,
                     ) -> dict[str, object]:
    """Measured ceilings of the device: copy bandwidth (GB/s) and matmul throughput (TFLOP/s).

    The matmul runs with PyTorch's TF32 switch off (IEEE float32); on CUDA in float32
    it is measured again with TF32 on (``matmul_tf32_tflops``); the switch is restored.

    Args:
        device: ``"cpu"`` or ``"cuda"``. dtype: of the matmul. Default float32.
        quick: smaller sizes (CPU quick runs: 16 MiB copied, 512² matmul). Default False.

    Returns:
        ``{"copy_gbytes_per_s", "matmul_tflops", "matmul_size", "matmul_dtype"}`` and,
        on CUDA in float32, ``"matmul_tf32_tflops"``.

    Example:
        >>> ceilings = measure_ceilings("cpu", quick=True)
        >>> ceilings["copy_gbytes_per_s"] > 0 and ceilings["matmul_size"] == 512
        True
    """
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    numel = (1 << 28) if cuda else (1 << (22 if quick else 24))  # 1 GiB of float32 on a GPU
    out: dict[str, object] = {"copy_gbytes_per_s": _copy_gbytes_per_s(numel, dev)}
    n = 8192 if cuda else (512 if quick else 1024)
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    previous = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        out.update(matmul_tflops=_matmul_tflops(a, b), matmul_size=n, matmul_dtype=str(dtype))
        if cuda and dtype == torch.float32:
            torch.backends.cuda.matmul.allow_tf32 = True
            out["matmul_tf32_tflops"] = _matmul_tflops(a, b)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    return out
