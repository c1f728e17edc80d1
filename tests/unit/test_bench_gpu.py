"""`python -m alexserve.bench.gpu`: its plain AlexNet has torchvision's shapes, it refuses to run without CUDA,
and its CPU smoke mode runs the whole code path (grouped vs plain, DALI-fed vs model-only, fp32 and bf16)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from alexserve.bench.gpu import NO_CUDA_EXIT, PlainAlexNet, main
from helpers.processes import REPO

# torchvision.models.alexnet(): 61,100,840 parameters (its documentation's figure).
TORCHVISION_ALEXNET_PARAMETERS = 61_100_840


def test_plain_alexnet_has_torchvisions_shapes():
    model = PlainAlexNet()
    assert sum(p.numel() for p in model.parameters()) == TORCHVISION_ALEXNET_PARAMETERS
    convs = [m.out_channels for m in model.features if isinstance(m, torch.nn.Conv2d)]
    assert convs == [64, 192, 384, 256, 256]
    assert model(torch.zeros(2, 3, 224, 224)).shape == (2, 1000)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what a host without a GPU says")
def test_without_cuda_it_exits_2_and_names_the_smoke_mode(capsys):
    assert main([]) == NO_CUDA_EXIT
    err = capsys.readouterr().err
    assert "needs a CUDA GPU" in err and "--device cpu --batch-size 8 --steps 2" in err


@pytest.mark.timeout(240)
def test_cpu_smoke_mode_runs_every_measurement(tmp_path):
    out = tmp_path / "gpu.json"
    command = [sys.executable, "-m", "alexserve.bench.gpu", "--device", "cpu", "--batch-size", "8", "--steps", "2"]
    result = subprocess.run([*command, "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=220)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    for precision in ("fp32", "bf16"):
        assert f"{precision}: grouped two-tower step" in result.stdout and "grouped / plain" in result.stdout
        assert f"{precision}: end to end (DALI)" in result.stdout and "end-to-end / model-only" in result.stdout
    assert "smoke mode on CPU" in result.stdout

    figures = json.loads(out.read_text())["results"]
    assert set(figures) == {"fp32", "bf16"}
    assert all(f["grouped_over_plain"] > 0 and f["end_to_end_over_model_only"] > 0 for f in figures.values())
