"""Atomic writes: a failed write leaves the old file and no temporary behind; a finished one replaces it."""
import os

import numpy as np
import pytest

from ofa_core.fileio import copy_replacing, replacing, write_text_replacing


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "table.yaml"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        with replacing(target) as tmp:
            with open(tmp, "w") as f:
                f.write("half of the new")
            raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["table.yaml"]


def test_a_finished_write_replaces_the_file(tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("old")
    write_text_replacing(target, "new ü")
    assert target.read_text(encoding="utf-8") == "new ü"
    copy_replacing(target, tmp_path / "copy.txt")
    assert (tmp_path / "copy.txt").read_text(encoding="utf-8") == "new ü"
    assert sorted(os.listdir(tmp_path)) == ["copy.txt", "notes.txt"]


def test_suffix_keeps_the_extension_a_writer_insists_on(tmp_path):
    target = tmp_path / "cache.npz"
    with replacing(target, suffix=".npz") as tmp:
        np.savez(tmp, x=np.arange(3))     # savez would append ".npz" to any other name
    assert np.load(target)["x"].tolist() == [0, 1, 2]
    assert os.listdir(tmp_path) == ["cache.npz"]
