"""The `alexserve` command: every subcommand's --help works, errors map to exit codes, and --help needs no torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alexserve.cli import SUBCOMMANDS, main
from alexserve.config import ModelConfig
from alexserve.model import AlexNetGrouped
from alexserve.model.exported import EXPORT_FORMAT, seal

# The commands whose modules live in alexserve/cli/; "train", "supervisor" and "job" have their own tests.
LIBRARY_COMMANDS = ("synth", "digits", "prepare", "export", "eval", "predict")


def run_cli(argv: list[str]) -> int:
    """`alexserve ARGV` in this process: the exit code, whether returned or raised by argparse."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code


def test_top_level_help_lists_every_command(capsys):
    assert run_cli(["--help"]) == 0
    out = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert f"  {name} " in out, name


@pytest.mark.parametrize("name", LIBRARY_COMMANDS)
def test_each_command_has_help(name, capsys):
    assert SUBCOMMANDS[name][0] == f"alexserve.cli.{name}"
    assert run_cli([name, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: alexserve {name} "), out[:200]


def test_unknown_command_is_a_usage_error(capsys):
    assert run_cli(["nonsense"]) == 2
    assert "unknown command 'nonsense'" in capsys.readouterr().err


def test_the_dispatcher_and_top_level_help_import_no_torch():
    code = "import sys; from alexserve.cli import main; main(['--help']); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.splitlines()[-1] == "False", out


def test_digits_writes_the_tree(tmp_path: Path, capsys):
    pytest.importorskip("sklearn")
    assert run_cli(["digits", str(tmp_path / "d"), "--size", "16"]) == 0
    assert "digits: wrote 1438 training and 359 validation images" in capsys.readouterr().err
    with Image.open(next((tmp_path / "d" / "val" / "7").iterdir())) as image:
        assert image.size == (16, 16)


def test_digits_without_scikit_learn_says_what_to_install(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # makes `from sklearn.datasets import ...` fail
    assert run_cli(["digits", str(tmp_path / "d")]) == 1
    assert "pip install" in capsys.readouterr().err


def test_digits_rejects_a_size_below_the_scans(tmp_path: Path, capsys):
    assert run_cli(["digits", str(tmp_path / "d"), "--size", "4"]) == 2
    assert "--size" in capsys.readouterr().err


def test_export_of_a_folder_without_checkpoints_exits_2(tmp_path: Path, capsys):
    assert run_cli(["export", str(tmp_path), str(tmp_path / "out.pt")]) == 2
    assert capsys.readouterr().err.startswith(f"alexserve export: {tmp_path}: neither a complete checkpoint")
    assert not (tmp_path / "out.pt").exists()


def test_eval_of_a_missing_model_exits_2(tmp_path: Path, capsys):
    assert run_cli(["eval", str(tmp_path / "none.pt"), "--data", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("alexserve eval: ")


def test_predict_of_a_missing_model_exits_2(tmp_path: Path, capsys):
    assert run_cli(["predict", str(tmp_path / "none.pt"), str(tmp_path / "a.jpg")]) == 2
    assert capsys.readouterr().err == f"alexserve predict: {tmp_path / 'none.pt'}: no such file\n"


TINY = ModelConfig(num_classes=3, width=0.25, input_size=64, input_scaling="raw")


def write_export(path: Path, **extras) -> None:
    model = AlexNetGrouped(TINY)
    content = {
        "format": EXPORT_FORMAT,
        "model_config": TINY.model_dump(mode="json"),
        "state_dict": model.state_dict(),
        "step": 0,
        **extras,
    }
    torch.save(seal(content), path)


def test_predict_needs_the_mean_image(tmp_path: Path, capsys):
    write_export(tmp_path / "m.pt")
    assert run_cli(["predict", str(tmp_path / "m.pt"), str(tmp_path / "a.jpg")]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"alexserve predict: {tmp_path / 'm.pt'} has no mean image (its job did not train on a prepared tree)\n"
    )


def test_predict_prints_the_top_classes_of_each_image(tmp_path: Path, capsys):
    classes = [{"index": 0, "synset": "n0", "name": "zero"}, {"index": 1, "synset": "n1", "name": "n1"}]
    write_export(tmp_path / "m.pt", mean_image=torch.full((73, 73, 3), 100.0), classes=classes)
    rng = np.random.default_rng(0)
    images = []
    for name, size in (("wide.png", (90, 60)), ("tall.jpg", (50, 80))):
        Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)).save(tmp_path / name)
        images.append(str(tmp_path / name))
    assert run_cli(["predict", str(tmp_path / "m.pt"), *images]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == images[0] and lines[4] == images[1] and len(lines) == 8  # 3 classes: the top 3 of each
    labels = {line.split("%  ", 1)[1] for line in lines[1:4]}
    assert labels == {"zero (n0)", "n1", "class 2"}
    assert abs(sum(float(line.split("%")[0]) for line in lines[1:4]) - 100.0) < 0.5


def test_predict_names_an_unreadable_image(tmp_path: Path, capsys):
    write_export(tmp_path / "m.pt", mean_image=torch.full((73, 73, 3), 100.0))
    (tmp_path / "text.jpg").write_text("not an image")
    assert run_cli(["predict", str(tmp_path / "m.pt"), str(tmp_path / "text.jpg")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("alexserve predict: ") and "text.jpg" in err
