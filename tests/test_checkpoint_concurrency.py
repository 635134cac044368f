"""Several processes saving to one path at once (issue 9, item 9): every save succeeds, a
reader never sees a torn file, and no temporary file is left behind.

Before, every save wrote to the same "<path>.tmp": two writers truncated each other's
bytes, and the second rename found no file (FileNotFoundError) or moved a mix of both."""

import subprocess
import sys
import time

import numpy as np
import pytest

import tinymoe as tm
from tinymoe import serialization

WRITER = """
import os, sys, time
import numpy as np
import tinymoe as tm
path, go, writer, saves = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
data = np.full(100_000, writer, np.int64)  # 800 kB: a save takes long enough to overlap
while not os.path.exists(go):  # start together
    time.sleep(0.001)
for _ in range(saves):
    tm.save({"writer": writer, "data": data}, path)
"""


def test_concurrent_writers_and_a_reader_never_see_a_torn_file(tmp_path):
    path, go = tmp_path / "ckpt.npz", tmp_path / "go"
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(go), str(w), "40"],
                                stderr=subprocess.PIPE, text=True) for w in range(4)]
    go.touch()
    reads = 0
    deadline = time.monotonic() + 60
    while any(w.poll() is None for w in writers) and time.monotonic() < deadline:
        if not path.exists():
            continue
        loaded = tm.load(path)  # never a torn or half-renamed file
        writer = int(loaded["writer"])
        assert loaded["data"].shape == (100_000,) and (loaded["data"] == writer).all()
        reads += 1
    errors = [w.communicate()[1] for w in writers]
    assert [w.returncode for w in writers] == [0, 0, 0, 0], errors
    assert reads > 0
    assert int(tm.load(path)["writer"]) in range(4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.npz", "go"]  # no temporary file left


def test_a_failed_save_removes_its_temporary_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.npz"
    tm.save({"step": 1}, path)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(serialization.np, "savez", disk_full)
    with pytest.raises(OSError, match="No space left"):
        tm.save({"step": 2}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.npz"]
    assert int(tm.load(path)["step"]) == 1


def test_each_save_writes_its_own_temporary_file(tmp_path, monkeypatch):
    # two saves in flight at once: the second must not reuse (and truncate) the first's file
    names = []
    real_open = serialization.os.open

    def recording_open(name, flags, mode=0o777):
        names.append(name)
        return real_open(name, flags, mode)

    monkeypatch.setattr(serialization.os, "open", recording_open)
    tm.save({"x": np.zeros(1)}, tmp_path / "ckpt.npz")
    tm.save({"x": np.ones(1)}, tmp_path / "ckpt.npz")
    assert len(set(names)) == 2 and all(name.startswith(str(tmp_path / "ckpt.npz.")) for name in names)
