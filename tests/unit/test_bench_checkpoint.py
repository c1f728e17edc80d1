"""alexserve.bench.checkpoint writes real shards through the store and reports their size and time."""

from __future__ import annotations

from alexserve.bench import checkpoint


def test_the_checkpoint_benchmark_writes_and_commits_shards(tmp_path, capsys):
    assert checkpoint.main(["--dir", str(tmp_path), "--width", "0.125", "--repeats", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("width 0.125: ") and len(lines) == 3
    assert all(" MB in " in line and "MB/s" in line and "commit" in line for line in lines[1:])
    assert list(tmp_path.iterdir()) == []  # its temporary folder is gone
