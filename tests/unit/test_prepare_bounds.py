"""`prepare` and `predict` refuse images above a pixel limit before decoding, and `prepare` stays inside SRC.

Issue 13, item 4: a 17 KB 1-bit PNG of 12000x12000 decoded to about 1 GB in `prepare` and `predict`; `prepare`
followed a class folder symlinked to /proc/self, and skipped symlink loops and FIFOs without listing them.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alexserve.cli import main
from alexserve.config import ModelConfig
from alexserve.data.prepare import prepare
from alexserve.data.prepared_tree import REPORT_FILE
from alexserve.model import AlexNetGrouped
from alexserve.model.exported import EXPORT_FORMAT, seal


def run_cli(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code


def png_bomb(path: Path, side: int = 12000) -> None:
    """A 1-bit black PNG of side x side, written row by row: about 17 KB on disk, side^2 pixels decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    compressor = zlib.compressobj(9)
    row = b"\0" * (1 + (side + 7) // 8)  # filter byte + packed bits
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1 bit, grayscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def small_image(path: Path, seed: int, size: tuple[int, int] = (40, 30)) -> None:
    pixels = (np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    for c, synset in enumerate(("n0", "n1")):
        (src / "train" / synset).mkdir(parents=True)
        for i in range(3):
            small_image(src / "train" / synset / f"{synset}_{i}.png", 10 * c + i)
    return src


def report(dst: Path) -> dict:
    return json.loads((dst / REPORT_FILE).read_text())


def test_a_png_bomb_is_rejected_from_its_header(source: Path, tmp_path: Path):
    png_bomb(source / "train" / "n0" / "bomb.png")
    assert (source / "train" / "n0" / "bomb.png").stat().st_size < 40_000
    summary = prepare(source, tmp_path / "dst", scale_size=32, workers=1)
    (rejected,) = summary["rejected"]
    assert rejected["src"].endswith("bomb.png")
    assert "12000x12000 = 144,000,000 pixels, above the limit of 100,000,000" in rejected["reason"]
    assert summary["train_images"] == 6


def test_the_pixel_limit_is_a_flag(source: Path, tmp_path: Path, capsys):
    small_image(source / "train" / "n1" / "big.png", 7, size=(50, 40))
    dst = tmp_path / "dst"
    argv = ["prepare", str(source), str(dst), "--scale-size", "32", "--workers", "1", "--max-image-pixels", "1500"]
    assert run_cli(argv) == 0
    (rejected,) = report(dst)["rejected"]
    assert (
        rejected["src"].endswith("big.png") and "50x40 = 2,000 pixels, above the limit of 1,500" in rejected["reason"]
    )
    assert "1 rejected" in capsys.readouterr().err


def test_predict_refuses_a_png_bomb(tmp_path: Path, capsys):
    cfg = ModelConfig(num_classes=3, width=0.25, input_size=64, input_scaling="raw")
    content = {
        "format": EXPORT_FORMAT,
        "model_config": cfg.model_dump(mode="json"),
        "state_dict": AlexNetGrouped(cfg).state_dict(),
        "step": 0,
        "mean_image": torch.full((73, 73, 3), 100.0),
    }
    torch.save(seal(content), tmp_path / "m.pt")
    png_bomb(tmp_path / "bomb.png")
    assert run_cli(["predict", str(tmp_path / "m.pt"), str(tmp_path / "bomb.png")]) == 2
    err = capsys.readouterr().err
    assert "bomb.png: 12000x12000 = 144,000,000 pixels, above the limit" in err and err.count("\n") == 1, err


def test_prepare_stays_inside_the_source_tree_and_lists_what_it_skips(source: Path, tmp_path: Path):
    train = source / "train"
    os.symlink("/proc/self", train / "n2")  # a class folder that leaves the tree
    os.symlink(train / "n0", train / "n3")  # one that stays inside it: followed
    os.symlink("loop", train / "n0" / "loop")  # a symlink loop
    os.symlink(tmp_path / "nowhere", train / "n0" / "broken.png")
    os.mkfifo(train / "n1" / "pipe.png")
    outside = tmp_path / "outside.png"
    small_image(outside, 99)
    os.symlink(outside, train / "n1" / "escape.png")  # a file that leaves the tree
    (train / "n1" / "sub").mkdir()

    summary = prepare(source, tmp_path / "dst", scale_size=32, workers=1)

    assert summary["classes"] == 3 and summary["train_images"] == 9  # n0, n1, n3 (= n0 again)
    reasons = {Path(s["path"]).relative_to(source).as_posix(): s["reason"] for s in report(tmp_path / "dst")["skipped"]}
    assert reasons["train/n2"].startswith("symlink leaving the source tree (-> /proc/")
    assert reasons["train/n1/escape.png"].startswith(f"symlink leaving the source tree (-> {outside}")
    assert reasons["train/n0/loop"].startswith("symlink loop")
    assert reasons["train/n3/loop"].startswith("symlink loop")
    assert reasons["train/n0/broken.png"].startswith("broken symlink")
    assert reasons["train/n1/pipe.png"] == "FIFO (named pipe)"
    assert reasons["train/n1/sub"] == "a folder inside a class folder (not searched)"
    assert not (tmp_path / "dst" / "train" / "n2").exists()
    assert all(not r["src"].endswith(("escape.png", "pipe.png")) for r in summary["rejected"])
