"""Issue 24, item 4: the TF32 policy leaves every getter of torch's precision state readable.

`configure_device_math` only acts on a CUDA device; it sets process-wide flags and needs no GPU to do so, so
this runs on the CPU build with `torch.device("cuda", 0)`.
"""

from __future__ import annotations

import pytest
import torch

from alexserve.train.precision import configure_device_math

CUDA = torch.device("cuda", 0)


def getters() -> dict:
    """Every view of the policy, legacy and new; a RuntimeError from any of them fails the test."""
    return {
        "matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul.fp32_precision": torch.backends.cuda.matmul.fp32_precision,
    }


@pytest.fixture(autouse=True)
def restore_torch_math():
    """Through the legacy setters, which keep both views consistent (and exist on every torch this runs on)."""
    before = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark
    yield
    torch.set_float32_matmul_precision(before[0])
    torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = before[1:]


@pytest.mark.parametrize("allow_tf32", [True, False])
def test_no_getter_raises_after_configure_device_math_on_cuda(allow_tf32):
    configure_device_math(CUDA, allow_tf32)
    assert getters() == {
        "matmul.allow_tf32": allow_tf32,
        "float32_matmul_precision": "high" if allow_tf32 else "highest",
        "cudnn.allow_tf32": allow_tf32,
        "matmul.fp32_precision": "tf32" if allow_tf32 else "ieee",
    }
    assert torch.backends.cudnn.benchmark


def test_cpu_is_left_alone():
    from alexserve.train.precision import MathPolicy

    before = MathPolicy.current()
    configure_device_math(torch.device("cpu"), allow_tf32=not before.cudnn_allow_tf32)
    assert MathPolicy.current() == before


def test_ieee_block_turns_tf32_off_and_restores_the_training_policy():
    from alexserve.train.precision import MathPolicy, ieee_fp32

    configure_device_math(CUDA, allow_tf32=True)
    training = MathPolicy.current()
    with ieee_fp32(CUDA):
        assert getters()["float32_matmul_precision"] == "highest" and not torch.backends.cudnn.allow_tf32
    assert MathPolicy.current() == training
    with pytest.raises(KeyError), ieee_fp32(CUDA):  # restored on the way out of a failure too
        raise KeyError
    assert MathPolicy.current() == training and getters()["matmul.allow_tf32"]
