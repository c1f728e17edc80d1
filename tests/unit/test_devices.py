"""Issue 24, item 2: an index-less `torch.device("cuda")` must not reach `torch.cuda.set_device`.

torch 2.13's `set_device` raises on it (torch/_utils.py `_get_device_index`: "Expected a torch.device with a
specified index"), before it touches the driver, so this runs on the CPU build: only the driver call below it,
`torch._C._cuda_setDevice`, and `current_device` are replaced.
"""

from __future__ import annotations

import pytest
import torch

from alexserve.data import dali_loader, pil_loader


@pytest.fixture
def fake_cuda(monkeypatch):
    """Records the index the real `torch.cuda.set_device` hands the driver; GPU 0 is current."""
    calls: list[int] = []
    monkeypatch.setattr(torch._C, "_cuda_setDevice", calls.append, raising=False)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    return calls


def test_set_device_itself_refuses_an_index_less_cuda_device(fake_cuda):
    """The premise, on this torch: without the fix the loader threads die here."""
    with pytest.raises(ValueError, match="specified index"):
        torch.cuda.set_device(torch.device("cuda"))
    assert fake_cuda == []


@pytest.mark.parametrize("loader", [dali_loader, pil_loader], ids=["dali", "pil"])
def test_both_loaders_set_device_helpers_accept_an_index_less_cuda_device(fake_cuda, loader):
    loader.use_device_in_this_thread(torch.device("cuda"))
    loader.use_device_in_this_thread(torch.device("cuda", 1))
    loader.use_device_in_this_thread(torch.device("cpu"))  # nothing to set
    assert fake_cuda == [0, 1]


def test_the_device_eval_chooses_has_an_index(fake_cuda):
    from alexserve.devices import default_device, indexed

    assert default_device() == torch.device("cuda", 0)
    assert indexed(torch.device("cuda")) == torch.device("cuda", 0)
    assert indexed("cpu") == torch.device("cpu")


def test_dali_device_id_is_the_index(fake_cuda):
    assert dali_loader._device_id(torch.device("cuda")) == 0
    assert dali_loader._device_id(torch.device("cuda", 1)) == 1
    assert dali_loader._device_id(torch.device("cpu")) is None


def test_eval_builds_its_sources_on_an_indexed_device(monkeypatch, fake_cuda, tmp_path):
    """`alexserve eval` (measure_error_rates) hands the loader the device it chose: it must carry an index."""
    from alexserve.inference import error_rates

    seen = {}

    class Stop(Exception):
        pass

    def fake_load_model(path, device):
        seen["model"] = device
        raise Stop

    monkeypatch.setattr(error_rates, "load_model", fake_load_model)
    with pytest.raises(Stop):
        error_rates.measure_error_rates(tmp_path / "model.pt", tmp_path)
    assert seen["model"] == torch.device("cuda", 0)
