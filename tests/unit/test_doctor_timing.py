"""Issue 24, item 7: the doctor times training's step under training's math policy, and its parity check
(IEEE fp32) gives the policy back.

CUDA events and synchronisation are replaced by recorders, so the order of what the timing does on a GPU is
checked on the CPU build; the policy flags are process-wide and need no GPU.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from alexserve.config import TrainConfig
from alexserve.doctor import pair_rank
from alexserve.train.precision import configure_device_math

CUDA = torch.device("cuda", 0)


def policy() -> tuple[str, bool, bool]:
    return torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark


@pytest.fixture(autouse=True)
def restore_torch_math():
    before = policy()
    yield
    torch.set_float32_matmul_precision(before[0])
    torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = before[1:]


@pytest.fixture
def gpu_log(monkeypatch):
    """Every CUDA event and synchronisation, in order, with the steps between them."""
    log: list[str] = []

    class Event:
        def __init__(self, enable_timing: bool = False):
            assert enable_timing
            self.name = "start" if not any(e.startswith("event") for e in log) else "end"
            log.append(f"event {self.name}")

        def record(self):
            log.append(f"record {self.name}")

        def synchronize(self):
            log.append(f"synchronize {self.name}")

        def elapsed_time(self, other):
            return 250.0  # ms

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: log.append("synchronize device"))
    return log


def test_the_timed_steps_run_under_trainings_policy_with_nothing_but_steps_between_the_events(gpu_log):
    torch.set_float32_matmul_precision("highest")  # what the parity check leaves on main
    torch.backends.cudnn.allow_tf32 = False
    seen = []

    def step():
        seen.append(policy())
        gpu_log.append("step")

    from alexserve.doctor import timing

    seconds = timing.time_training_steps(step, steps=5, device=CUDA)
    assert seconds == pytest.approx(0.25)
    tf32 = TrainConfig().allow_tf32
    assert set(seen) == {("high" if tf32 else "highest", tf32, True)}
    assert len(seen) == timing.WARMUP_STEPS + 5
    timed = gpu_log[gpu_log.index("record start") + 1 : gpu_log.index("record end")]
    assert timed == ["step"] * 5, gpu_log  # exactly the steps: no synchronisation, no read-back in between
    assert gpu_log[-1] == "synchronize end" and gpu_log.count("synchronize device") == 1


def test_the_parity_step_is_ieee_and_gives_trainings_policy_back(monkeypatch, tmp_path):
    configure_device_math(CUDA, allow_tf32=True)
    training = policy()
    inside = []

    def parity_part(topology, out: Path, dtype):
        inside.append((torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32, dtype))
        return {"dtype": "float32"}

    monkeypatch.setattr(pair_rank, "_two_tower_step", parity_part, raising=False)
    pair_rank.two_tower_step(SimpleNamespace(device=CUDA), tmp_path)
    assert inside == [("highest", False, torch.float32)]
    assert policy() == training


def test_the_grouped_doctor_step_reads_nothing_back():
    """The one-GPU throughput times `grouped_step_tensors`, whose figures stay 0-d tensors (no host sync)."""
    from alexserve.model import AlexNetGrouped
    from alexserve.train.optimizer import PaperSGD
    from alexserve.train.step import StepTensors, grouped_step_tensors

    cfg, batch = pair_rank.throughput_setup(torch.device("cpu"))
    model = AlexNetGrouped.from_seed(cfg, 0)
    images = torch.randn(2, 3, cfg.input_size, cfg.input_size)
    result = grouped_step_tensors(
        model, PaperSGD(model.parameters(), 0.01, 0.9, 5e-4), images, torch.tensor([0, 1]), None
    )
    assert isinstance(result, StepTensors) and isinstance(result.loss, torch.Tensor)
