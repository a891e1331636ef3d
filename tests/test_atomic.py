"""snvideo.atomic: an output replaces its file whole, or leaves the old one and no temporary."""
from __future__ import annotations

import os

import pytest

from snvideo.atomic import atomic_output, atomic_write_text


def test_success_replaces_the_file_and_creates_the_folder(tmp_path):
    path = tmp_path / "new" / "out.txt"
    atomic_write_text(path, "one\n")
    atomic_write_text(path, "two\r\n")  # written as given
    assert path.read_bytes() == b"two\r\n"
    assert os.listdir(path.parent) == ["out.txt"]


def test_failure_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = tmp_path / "latest.pt"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_output(path) as tmp:
            assert tmp == f"{path}.tmp.{os.getpid()}"
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("killed mid-write")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["latest.pt"]


def test_a_given_temporary_name_is_used(tmp_path):
    path, hidden = tmp_path / "a.mp4", tmp_path / ".a.partial.mp4"
    with atomic_output(path, hidden) as tmp:
        assert tmp == str(hidden)
        hidden.write_bytes(b"video")
        assert not path.exists()
    assert path.read_bytes() == b"video" and not hidden.exists()
