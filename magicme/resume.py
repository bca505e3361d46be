"""Run folders that continue: `sample.py --run-dir DIR` renders into DIR, creating it or continuing it.

Before any model loads, the main process locks an existing DIR and checks that it was rendered with the same
settings: every key that fixes the videos' pixels or files (magicme/naming.py), the prompts and seeds (a `-1` takes
the seed the run drew, read back from its config.yaml), the identities, and the fingerprints of the files. After the
models load it creates DIR (with `--force-new`, an existing DIR is first renamed to `DIR.old-<time>`: nothing is
ever deleted), writes config.yaml and the fingerprints once, and removes the temp files of an interrupted write.
"""

import json
import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from magicme.errors import ConfigError
from magicme.naming import describe_changes, file_fingerprints, name_samples, resumed_seeds, setting_changes
from magicme.rundir import RunLock, check_output_dir, is_lock_file, make_run_dir, move_aside, remove_stale_temp_files
from magicme.schema import expand_samples, load_sample_config
from magicme.stages import Sample
from magicme.video_io import atomic_path, is_temp_file

log = logging.getLogger("magicme")
CONFIG_NAME = "config.yaml"
FILES_NAME = "manifest/files.json"  # {config key: fingerprint} of the files the run's pixels depend on


class RunFolder:
    """The run folder of one launch, held (locked) by its main process."""

    def __init__(self, path: Path | str | None, force_new: bool = False):
        if force_new and path is None:
            raise ConfigError("--force-new: only with --run-dir (without it every run gets a new folder)")
        self.path = Path(path) if path is not None else None
        self.force_new = force_new
        self.lock: RunLock | None = None
        self.fingerprints: dict[str, str] = {}

    def claim(self, cfg: DictConfig, samples: list[Sample], embeddings: dict[str, Path]) -> list[Sample]:
        """Before the models load: lock and check an existing folder; the samples with their seeds (a resumed run's
        own) and names."""
        self.fingerprints = file_fingerprints(cfg, embeddings)
        if self.path is not None:
            check_output_dir(self.path, "--run-dir")
        if self.path is not None and self.path.exists():
            self.lock = RunLock(self.path).acquire()
            if not self.force_new:
                samples = self.resumed(cfg, samples)
        return name_samples(cfg, samples, self.fingerprints)

    def resumed(self, cfg: DictConfig, samples: list[Sample]) -> list[Sample]:
        saved_path = self.path / CONFIG_NAME
        if not saved_path.is_file():
            leftover = sorted(p.name for p in self.path.iterdir() if not (is_lock_file(p.name) or is_temp_file(p.name)))
            if leftover:
                raise ConfigError(f"--run-dir: {self.path} holds {leftover[0]} but no {CONFIG_NAME}, so it is no run "
                                  "folder of sample.py (one holds sample.py's files only); give a new or empty folder")
            return samples
        saved = load_sample_config(saved_path)
        stored_path = self.path / FILES_NAME
        stored = json.loads(stored_path.read_text()) if stored_path.is_file() else self.fingerprints
        seeds, changes = resumed_seeds(saved, cfg)
        changes = setting_changes(saved, stored, cfg, self.fingerprints) + changes
        if changes:
            raise describe_changes(changes, self.path)
        log.info("continuing %s", self.path)
        return expand_samples(cfg, seeds=seeds)

    def open(self, cfg: DictConfig, resolved: DictConfig, stem: str) -> Path:
        """After the models load: the folder exists, holds config.yaml (`resolved`, the seeds used) and no temp file
        of an interrupted write."""
        if self.path is None:
            self.path = make_run_dir(cfg.output_dir, stem)
        elif self.force_new and self.path.exists():
            aside = move_aside(self.path)
            (aside / self.lock.path.name).unlink(missing_ok=True)
            self.lock = None
            log.info("--force-new: moved the previous run to %s", aside)
        elif self.lock is None and (self.path / CONFIG_NAME).exists():
            raise ConfigError(f"--run-dir: {self.path} was started by another run meanwhile; run again to continue it")
        self.path.mkdir(parents=True, exist_ok=True)
        if self.lock is None:
            self.lock = RunLock(self.path).acquire()
        if not (self.path / CONFIG_NAME).exists():
            with atomic_path(self.path / FILES_NAME) as tmp:
                tmp.write_text(json.dumps(self.fingerprints, indent=1, sort_keys=True))
            with atomic_path(self.path / CONFIG_NAME) as tmp:
                OmegaConf.save(resolved, tmp)
        removed = remove_stale_temp_files(self.path)
        if removed:
            log.info("removed %d temporary files an interrupted run left in %s", removed, self.path)
        return self.path

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
