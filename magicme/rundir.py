"""Output folders: one way to create a timestamped run folder, checked before any model loads, a lock so two
processes never write into one run folder, and moving a folder aside instead of deleting it."""

import os
import re
from datetime import datetime
from pathlib import Path

from magicme.errors import ConfigError

LOCK_NAME = ".lock"


def check_output_dir(output_dir: Path | str, key: str = "output_dir") -> Path:
    """`output_dir` must be a folder we can write in, or creatable; checked before loading anything."""
    folder = Path(output_dir)
    existing = next((p for p in [folder, *folder.parents] if p.exists()), Path("."))
    if existing.is_file() or (existing.exists() and not existing.is_dir()):
        raise ConfigError(f"{key}: {existing} is a file, not a folder; choose another {key}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}: {existing} is not writable; choose another {key} or fix its permissions")
    return folder


def make_run_dir(output_dir: Path | str, stem: str, key: str = "output_dir") -> Path:
    """A new `<output_dir>/<stem>-<YYYYmmdd-HHMMSS>[-N]/` folder; never an existing one."""
    base = check_output_dir(output_dir, key) / f"{stem}-{datetime.now():%Y%m%d-%H%M%S}"
    base.parent.mkdir(parents=True, exist_ok=True)
    run_dir, n = base, 1
    while True:
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            run_dir, n = base.with_name(f"{base.name}-{n}"), n + 1


def move_aside(folder: Path | str) -> Path:
    """Rename `folder` to `<name>.old-<YYYYmmdd-HHMMSS>[-N]` beside it: starting afresh never deletes a result."""
    folder = Path(folder)
    base = folder.with_name(f"{folder.name}.old-{datetime.now():%Y%m%d-%H%M%S}")
    target, n = base, 1
    while target.exists():
        target, n = base.with_name(f"{base.name}-{n}"), n + 1
    folder.rename(target)
    return target


class RunLock:
    """An exclusive lock file in a run folder, held while a process writes there.

    Holding it is `O_CREAT | O_EXCL` on `<run>/.lock` holding the owner's pid; a lock left by a process that no
    longer exists (killed) is taken over, so a crash never blocks a resume.
    """

    def __init__(self, run_dir: Path | str):
        self.path = Path(run_dir) / LOCK_NAME

    def acquire(self) -> "RunLock":
        # the pid is written to a private file first and hard-linked into place, so the lock file never exists
        # without its owner's pid (a reader in between would take it for stale)
        mine = self.path.with_name(f"{LOCK_NAME}.{os.getpid()}")
        mine.write_text(str(os.getpid()))
        try:
            for _ in range(2):
                try:
                    os.link(mine, self.path)
                    return self
                except FileExistsError:
                    owner = self._owner()
                    if owner is not None and _alive(owner):
                        raise ConfigError(f"{self.path.parent}: another process (pid {owner}) is writing this run; "
                                          "wait for it to finish or stop it") from None
                    self.path.unlink(missing_ok=True)  # stale: its owner died
        finally:
            mine.unlink(missing_ok=True)
        raise ConfigError(f"{self.path}: cannot take the run lock; remove this file if no process uses the run")

    def release(self) -> None:
        if self._owner() == os.getpid():
            self.path.unlink(missing_ok=True)

    def _owner(self) -> int | None:
        try:
            return int(self.path.read_text().strip())
        except (OSError, ValueError):
            return None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_lock_file(name: str) -> bool:
    """`.lock` and the `.lock.<pid>` file a lock is taken through."""
    return name == LOCK_NAME or re.fullmatch(re.escape(LOCK_NAME) + r"\.\d+", name) is not None


def remove_stale_temp_files(folder: Path | str) -> int:
    """Delete the temp files an interrupted atomic write left: exactly the names `video_io.atomic_path` makes
    (`is_temp_file`), never any other file, hidden or not."""
    from magicme.video_io import is_temp_file  # video_io imports numpy and PIL; this module stays import-light

    removed = 0
    for path in Path(folder).rglob(".*"):
        if path.is_file() and not path.is_symlink() and is_temp_file(path.name):
            path.unlink()
            removed += 1
    return removed
