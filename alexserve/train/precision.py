"""What the step computes in: fp32 or bf16 autocast, the memory layout, and the GPU's math settings.

`train.precision: fp32` (default) computes in the parameters' dtype (`train.dtype`, float32 or float64 for the
exactness tests). `bf16` runs forward and loss under `torch.autocast(device, bfloat16)`: convolutions and
matmuls in bf16, softmax and the loss in fp32, parameters, gradients' accumulation and the optimizer in fp32;
the exchanges then carry bf16 (parallel/exchange.py). `train.channels_last` stores the tower's conv weights and
its input in channels-last order, the layout cuDNN's fastest convolutions want on tensor-core GPUs.

GPU math (`configure_device_math`, CUDA only): `cudnn.benchmark` on, since every step has the same shapes
(one search per shape at the first step, then the fastest kernel); and the TF32 policy: with
`train.allow_tf32` (default true) fp32 convolutions and matmuls may use TF32 tensor cores (10-bit mantissa
products, fp32 sums), which SGD on this net does not notice; false asks for IEEE fp32. float64 is never affected.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from alexserve.config import JobConfig

_AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Precision:
    device_type: str = "cpu"
    autocast_dtype: torch.dtype | None = None
    channels_last: bool = False

    @classmethod
    def of(cls, job: JobConfig, device: torch.device) -> Precision:
        return cls(device.type, _AUTOCAST_DTYPES[job.train.precision], job.train.channels_last)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.autocast_dtype)

    def images(self, images: torch.Tensor) -> torch.Tensor:
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def prepare(self, module: torch.nn.Module) -> torch.nn.Module:
        """The module's parameters in the layout asked for (4-d conv weights channels-last)."""
        return module.to(memory_format=torch.channels_last) if self.channels_last else module


FP32 = Precision()


def set_tf32(allow_tf32: bool) -> None:
    """The TF32 policy through the API that keeps torch's old and new precision state consistent.

    torch >= 2.9 has two views of it: the legacy getters (`torch.backends.cuda.matmul.allow_tf32`,
    `torch.get_float32_matmul_precision()`, `torch.backends.cudnn.allow_tf32`) and the per-backend
    `fp32_precision` attributes. Setting only the new attributes leaves the legacy getters raising RuntimeError
    (checked on torch 2.13), and torch.compile and libraries read those. Setting through the legacy setters updates
    both views (the new attributes then read 'tf32' or 'ieee').
    """
    torch.set_float32_matmul_precision("high" if allow_tf32 else "highest")
    torch.backends.cudnn.allow_tf32 = allow_tf32


def configure_device_math(device: torch.device, allow_tf32: bool) -> None:
    """cudnn.benchmark and the TF32 policy on CUDA (module docstring); nothing on CPU."""
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = True
    set_tf32(allow_tf32)


@dataclass(frozen=True)
class MathPolicy:
    """What `configure_device_math` sets, as read back (to restore it after a block that changes it)."""

    matmul_precision: str
    cudnn_allow_tf32: bool
    cudnn_benchmark: bool

    @classmethod
    def current(cls) -> MathPolicy:
        return cls(
            torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark
        )

    def apply(self) -> None:
        torch.set_float32_matmul_precision(self.matmul_precision)
        torch.backends.cudnn.allow_tf32 = self.cudnn_allow_tf32
        torch.backends.cudnn.benchmark = self.cudnn_benchmark


@contextlib.contextmanager
def ieee_fp32(device: torch.device):
    """IEEE fp32 (no TF32) on CUDA for the block, and the policy from before it afterwards (nothing on CPU).

    For exactness checks (the doctor's parity), which must not leave training-speed code behind them in IEEE mode.
    """
    if device.type != "cuda":
        yield
        return
    before = MathPolicy.current()
    set_tf32(False)
    try:
        yield
    finally:
        before.apply()
