"""A damaged or incomplete export, or one holding a number that is not finite, is one clear line and exit 2.

Issue 13, item 5: 400 flipped bytes in conv2.weight used to load, predict and exit 0; a missing key or an absurd
class count gave a traceback or tried a huge allocation.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alexserve.checkpoint.export import export_checkpoint
from alexserve.checkpoint.store import CheckpointStore
from alexserve.cli import main
from alexserve.config import JobConfig, ModelConfig
from alexserve.model import AlexNetGrouped
from alexserve.model.exported import DIGEST_KEY, EXPORT_FORMAT, ExportError, content_digest, load_exported, seal
from alexserve.model.tower_split import split_grouped_state

TINY = ModelConfig(num_classes=3, width=0.25, input_size=64, input_scaling="raw")


def run_cli(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code


def content(**extras) -> dict:
    torch.manual_seed(0)
    return {
        "format": EXPORT_FORMAT,
        "model_config": TINY.model_dump(mode="json"),
        "state_dict": AlexNetGrouped(TINY).state_dict(),
        "step": 7,
        "mean_image": torch.full((73, 73, 3), 100.0),
        "classes": [{"index": i, "synset": f"n{i}", "name": f"c{i}"} for i in range(3)],
        **extras,
    }


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "photo.png"
    Image.fromarray((np.random.default_rng(0).random((80, 90, 3)) * 255).astype(np.uint8)).save(path)
    return path


def assert_one_line_exit_2(argv: list[str], capsys, *needles: str) -> str:
    assert run_cli(argv) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def test_an_export_round_trips_with_its_digest(tmp_path: Path, image: Path, capsys):
    torch.save(seal(content()), tmp_path / "m.pt")
    model, meta = load_exported(tmp_path / "m.pt")
    assert meta[DIGEST_KEY] == content_digest(meta)
    assert run_cli(["predict", str(tmp_path / "m.pt"), str(image)]) == 0


def test_export_writes_the_digest(tmp_path: Path):
    """`alexserve export` seals what it writes (through durable.write_through, as before)."""
    job = JobConfig(model=TINY)
    store = CheckpointStore(tmp_path / "ckpt", keep_last=1)
    towers = split_grouped_state(TINY, AlexNetGrouped(TINY).state_dict())
    for tower, name in enumerate(store.shard_names):
        store.write_shard(4, name, {"model": towers[tower]})
    store.commit(4, {"epoch": 0}, job.model_dump(mode="json"))
    out = export_checkpoint(tmp_path / "ckpt", tmp_path / "m.pt")
    raw = torch.load(out, weights_only=True)
    assert raw[DIGEST_KEY] == content_digest(raw) and raw["step"] == 4
    load_exported(out)


def flip_bytes_in(path: Path, tensor: torch.Tensor, count: int = 400) -> None:
    """Inverts `count` bytes in the middle of `tensor`'s stored data inside the file at `path`."""
    data = bytearray(path.read_bytes())
    raw = tensor.contiguous().view(torch.uint8).numpy().tobytes()
    at = data.find(raw)
    assert at >= 0, "tensor bytes not found in the file"
    start = at + len(raw) // 2
    data[start : start + count] = bytes(b ^ 0xFF for b in data[start : start + count])
    path.write_bytes(bytes(data))


def test_flipped_bytes_in_a_weight_are_refused(tmp_path: Path, image: Path, capsys):
    sealed = seal(content())
    torch.save(sealed, tmp_path / "m.pt")
    flip_bytes_in(tmp_path / "m.pt", sealed["state_dict"]["conv2.weight"])
    torch.load(tmp_path / "m.pt", weights_only=True)  # torch itself does not notice
    assert_one_line_exit_2(["predict", str(tmp_path / "m.pt"), str(image)], capsys, "m.pt: corrupt: the SHA-256")
    assert_one_line_exit_2(["eval", str(tmp_path / "m.pt"), "--data", str(tmp_path)], capsys, "corrupt")


@pytest.mark.parametrize("key", ["state_dict", "model_config", DIGEST_KEY])
def test_a_missing_key_is_one_line(tmp_path: Path, image: Path, capsys, key: str):
    damaged = seal(content())
    del damaged[key]
    torch.save(damaged, tmp_path / "m.pt")
    assert_one_line_exit_2(["predict", str(tmp_path / "m.pt"), str(image)], capsys, "m.pt: ", key)


def test_an_absurd_class_count_allocates_nothing(tmp_path: Path, image: Path, capsys, monkeypatch):
    """A resealed file whose model_config asks for 100,000 classes: building that model would allocate fc8 first."""
    big = {**TINY.model_dump(mode="json"), "num_classes": 100_000}
    torch.save(seal(content(model_config=big)), tmp_path / "m.pt")
    built = []
    monkeypatch.setattr(AlexNetGrouped, "__init__", _recording_init(built))
    err = assert_one_line_exit_2(["predict", str(tmp_path / "m.pt"), str(image)], capsys, "fc8")
    assert "model_config gives" in err
    assert all(device == "meta" for device in built), built  # only the shape check's meta model was built


def _recording_init(built: list):
    original = AlexNetGrouped.__init__

    def init(self, cfg):
        built.append(torch.empty(0).device.type)  # the default device the model is built on
        original(self, cfg)

    return init


@pytest.mark.parametrize(
    "field, value",
    [
        ("mean_image", torch.full((73, 73, 3), float("nan"))),
        ("state_dict", None),  # conv1.weight set to inf below
    ],
)
def test_a_non_finite_value_is_refused_even_when_resealed(tmp_path: Path, image: Path, capsys, field, value):
    bad = content()
    if field == "state_dict":
        bad["state_dict"]["conv1.weight"][0, 0, 0, 0] = float("inf")
    else:
        bad[field] = value
    torch.save(seal(bad), tmp_path / "m.pt")
    assert_one_line_exit_2(["predict", str(tmp_path / "m.pt"), str(image)], capsys, "not finite")


def test_a_non_finite_number_in_metadata_cannot_be_sealed_or_loaded(tmp_path: Path):
    with pytest.raises(ValueError, match="not a finite number"):
        seal(content(step=float("nan")))
    bad = content()
    bad["model_config"] = {**bad["model_config"], "lrn_k": float("inf")}
    torch.save({**bad, DIGEST_KEY: "0" * 64}, tmp_path / "m.pt")
    with pytest.raises(ExportError, match="not a finite number"):
        load_exported(tmp_path / "m.pt")


def test_more_classes_than_the_model_has_are_refused(tmp_path: Path):
    many = [{"index": i, "synset": f"n{i}", "name": f"c{i}"} for i in range(5)]
    torch.save(seal(content(classes=many)), tmp_path / "m.pt")
    with pytest.raises(ExportError, match="5 classes listed, model_config.num_classes is 3"):
        load_exported(tmp_path / "m.pt")


def test_a_fifo_is_not_read(tmp_path: Path, image: Path, capsys):
    import os

    os.mkfifo(tmp_path / "m.pt")
    assert_one_line_exit_2(["predict", str(tmp_path / "m.pt"), str(image)], capsys, "not a regular file")


def test_classes_json_and_stats_refuse_non_finite_numbers(tmp_path: Path):
    from alexserve.data.prepared_tree import DatasetError, read_class_index
    from alexserve.data.stats import DatasetStats

    (tmp_path / "classes.json").write_text(json.dumps([{"index": float("nan"), "synset": "n0"}]))
    with pytest.raises(DatasetError, match="classes.json"):
        read_class_index(tmp_path / "classes.json")
    (tmp_path / "classes.json").write_text('[{"index": Infinity, "synset": "n0"}]')
    with pytest.raises(DatasetError, match="classes.json: .*non-finite"):
        read_class_index(tmp_path / "classes.json")
    good = DatasetStats(
        mean_image=np.full((8, 8, 3), 100.0, np.float32),
        rgb_covariance=np.eye(3),
        rgb_eigenvalues=np.ones(3),
        rgb_eigenvectors=np.eye(3),
        num_images=4,
        scale_size=8,
    )
    good.save(tmp_path / "stats.npz")
    DatasetStats.load(tmp_path / "stats.npz")
    for field in ("mean_image", "rgb_eigenvalues", "rgb_covariance"):
        array = getattr(good, field).copy()
        array.flat[0] = np.nan
        bad = DatasetStats(**{**good.__dict__, field: array})
        bad.save(tmp_path / "stats.npz")
        with pytest.raises(DatasetError, match=f"stats.npz: {field} holds values that are not finite"):
            DatasetStats.load(tmp_path / "stats.npz")


def test_digest_is_over_values_not_file_layout():
    a, b = content(), content()
    assert content_digest(a) == content_digest(b)
    b["state_dict"]["fc8.bias"][0] += 1e-3
    assert content_digest(a) != content_digest(b)
    assert len(content_digest(a)) == len(hashlib.sha256().hexdigest())
