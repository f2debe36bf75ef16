"""Peak CUDA memory of one measurement, for the benchmarks' JSON lines (None on CPU, where there is none)."""

from __future__ import annotations

import torch


def reset_peak(device: torch.device) -> None:
    """Start a measurement: the next `peak_mib` covers only what is allocated from here on."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> float | None:
    """torch.cuda.max_memory_allocated since the last `reset_peak`, in MiB."""
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
