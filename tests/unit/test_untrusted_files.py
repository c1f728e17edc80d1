"""A job spec file is refused before parsing unless it is a small regular file, and YAML aliases are refused."""

from __future__ import annotations

import os
import time

import pytest

from alexserve.config import ConfigError, build_config, read_config_file
from alexserve.untrusted_files import MAX_CONFIG_BYTES

# Nine levels of nine aliases each: under 500 bytes of YAML that safe_load would expand to 9**9 (387 million) strings.
ANCHOR_BOMB = "a0: &a0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 9)
)


def test_a_yaml_anchor_bomb_is_refused_without_expanding_it(tmp_path):
    spec = tmp_path / "bomb.yaml"
    spec.write_text(ANCHOR_BOMB)
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"bomb.yaml: .*aliases \(\*a0\) are not allowed"):
        read_config_file(spec)
    assert time.monotonic() - started < 1.0


def test_a_device_that_never_ends_is_refused_before_reading(tmp_path):
    with pytest.raises(ConfigError, match="/dev/zero: not a regular file"):
        read_config_file("/dev/zero")


@pytest.mark.timeout(10)
def test_a_fifo_is_refused_at_once_instead_of_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "spec.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="spec.yaml: not a regular file"):
        read_config_file(fifo)


def test_a_folder_and_a_missing_file_are_named(tmp_path):
    with pytest.raises(ConfigError, match="not a regular file"):
        read_config_file(tmp_path)
    with pytest.raises(ConfigError, match="missing.yaml: cannot read: No such file"):
        read_config_file(tmp_path / "missing.yaml")


def test_a_file_over_the_size_limit_is_refused_before_parsing(tmp_path):
    spec = tmp_path / "big.yaml"
    spec.write_bytes(b"# padding\n" * (MAX_CONFIG_BYTES // 10 + 1))
    with pytest.raises(ConfigError, match=r"big.yaml: [\d,]+ bytes, over the limit"):
        read_config_file(spec)


def test_text_that_is_not_utf8_is_named(tmp_path):
    spec = tmp_path / "latin1.yaml"
    spec.write_bytes(b"train: {batch_size: 64}  # caf\xe9\n")
    with pytest.raises(ConfigError, match="latin1.yaml: not UTF-8"):
        read_config_file(spec)


def test_anchors_without_aliases_and_ordinary_specs_still_load(tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_text("train: &t {batch_size: 64}\nmodel: {width: 0.5}\n")
    assert read_config_file(spec) == {"train": {"batch_size": 64}, "model": {"width": 0.5}}


def test_an_override_with_an_alias_is_refused():
    with pytest.raises(ConfigError, match="override"):
        build_config({}, ["model.tower_conv_channels=[*a]"])
