"""Where a device is chosen, it is chosen with its index: `torch.device("cuda", i)`, never `torch.device("cuda")`.

`torch.cuda.set_device` refuses a CUDA device without an index ("Expected a torch.device with a specified index
or an integer", torch/_utils.py `_get_device_index`, torch 2.13), and the loaders' threads call it with the device
they were given. So a device is normalised once, here, where it is chosen (`default_device`), and the per-thread
helper normalises again for callers that still hand it an index-less one.
"""

from __future__ import annotations

import torch


def indexed(device: torch.device | str) -> torch.device:
    """`device` with its index: an index-less CUDA device becomes the current CUDA device; CPU stays CPU."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def default_device() -> torch.device:
    """The current CUDA device (with its index) where there is a GPU, else the CPU: for one-process tools (eval)."""
    return indexed("cuda") if torch.cuda.is_available() else torch.device("cpu")


def use_device_in_this_thread(device: torch.device) -> None:
    """Makes `device` this thread's CUDA device (a loader thread's copies and allocations land on the tower's GPU)."""
    if device.type == "cuda":
        torch.cuda.set_device(indexed(device))
