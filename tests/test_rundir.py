"""Run folders: created fresh and checked first, one writer at a time, interrupted writes cleaned."""

import os

import pytest

from magicme.errors import ConfigError
from magicme.rundir import RunLock, check_output_dir, make_run_dir, remove_stale_temp_files
from magicme.video_io import atomic_path


def test_run_dirs_are_new_folders_even_within_one_second(tmp_path):
    first, second = make_run_dir(tmp_path / "out", "cfg"), make_run_dir(tmp_path / "out", "cfg")
    assert first != second and first.is_dir() and second.is_dir() and second.name.startswith(first.name)


def test_output_dir_must_be_a_writable_folder(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        check_output_dir(tmp_path / "file" / "deeper", "output_dir")
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(ConfigError, match="output_dir: .* is not writable"):
        check_output_dir(tmp_path / "new", "output_dir")


def test_one_writer_at_a_time_and_a_dead_owner_does_not_block(tmp_path):
    with RunLock(tmp_path):
        assert (tmp_path / ".lock").read_text() == str(os.getpid())
        with pytest.raises(ConfigError, match="another process .* is writing this run"):
            RunLock(tmp_path).acquire()
    assert not (tmp_path / ".lock").exists()
    (tmp_path / ".lock").write_text("999999999")  # a pid no process has: a killed run's lock
    with RunLock(tmp_path):
        assert (tmp_path / ".lock").read_text() == str(os.getpid())


def test_stale_temp_files_are_removed_and_the_lock_kept(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "video.mp4") as tmp:
            tmp.write_bytes(b"half")
            os.link(tmp, tmp_path / "kept-aside")
            raise RuntimeError
    os.rename(tmp_path / "kept-aside", tmp)  # the temp file as a killed process leaves it (no `finally` ran)
    (tmp_path / "kept.mp4").write_bytes(b"done")
    with RunLock(tmp_path):
        assert remove_stale_temp_files(tmp_path) == 1
        assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "kept.mp4"]
