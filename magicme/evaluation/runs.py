"""What evaluation reads: sample run folders (their `samples.jsonl`, see docs/DESIGN.md) and reference photos.

Everything is checked here, before any model loads, so a typo costs seconds, not a CLIP download.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from magicme.errors import ConfigError
from magicme.images import IMAGE_SUFFIXES, image_files, read_image
from magicme.prompts import Prompt

# Lossless frame folders first, then MP4 (what the paper's videos were), then GIF (palette-quantised).
FILE_PREFERENCE = ("frames", "mp4", "gif")
STAGE_ORDER = ("t2v", "edit", "face", "tiled")


@dataclass(frozen=True)
class VideoSample:
    run: str  # the run folder's name, the label in tables and charts
    stage: str  # t2v / edit / face / tiled
    index: int
    prompt: Prompt  # a string, or {frame: text} for prompt travel
    seed: int | None
    gamma: float | None
    path: Path
    shape: tuple | None = None  # (frames, height, width) as samples.jsonl records it
    folder: Path | None = None  # the run folder (its eval_cache.jsonl keeps the scores)


def run_labels(folders: list[Path]) -> list[str]:
    """Folder names, or the paths as given where two runs share a name."""
    names = [f.name for f in folders]
    return [n if names.count(n) == 1 else str(f) for n, f in zip(names, folders)]


def load_run(folder: Path, label: str) -> list[VideoSample]:
    """The videos of one run folder, one per (sample, stage) record."""
    if not folder.is_dir():
        raise ConfigError(f"--samples: {folder} is not a folder; give a sample run folder (outputs/<config>-<time>/)")
    listing = folder / "samples.jsonl"
    if not listing.is_file():
        raise ConfigError(f"--samples: {folder} has no samples.jsonl; give a run folder written by sample.py")
    samples = []
    for number, line in enumerate(listing.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{listing}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{where}: not valid JSON ({err.msg}); the file may be truncated") from err
        missing = {"prompt", "stage", "files"} - set(record) if isinstance(record, dict) else {"prompt"}
        if missing:
            raise ConfigError(f"{where}: missing key(s) {sorted(missing)}; expected a record as sample.py writes it")
        files = record["files"]
        kind = next((k for k in FILE_PREFERENCE if isinstance(files, dict) and k in files), None)
        if kind is None:
            raise ConfigError(f"{where}: 'files' names no video ({', '.join(FILE_PREFERENCE)})")
        path = listed_file(folder, files[kind], f"{where}: files.{kind}")
        if not path.exists():
            raise ConfigError(f"{where}: {path} is missing; the run folder is incomplete or was moved without its "
                              f"videos")
        shape = tuple(record.get(k) for k in ("frames", "height", "width"))
        samples.append(VideoSample(label, str(record["stage"]), int(record.get("index", len(samples))),
                                   read_prompt(record["prompt"]), record.get("seed"), record.get("gamma"), path,
                                   None if None in shape else shape, folder))
    if not samples:
        raise ConfigError(f"{listing}: no samples listed; the sampling run wrote nothing")
    return samples


def inside(path: Path, folder: Path) -> bool:
    """Whether `path`, with `..` and every symlink resolved, lies in `folder` (also resolved)."""
    return path.resolve().is_relative_to(folder.resolve())


def listed_file(folder: Path, name: object, where: str) -> Path:
    """A video that samples.jsonl names, which must lie inside the run folder.

    A listing is data, not a command: a name such as `../../etc/x.mp4`, an absolute path or a symlink leading out
    of the run must not make evaluation read (and put into its report) a file the run did not write. A frame
    folder's images are checked too, since each could be such a symlink.
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: {name!r} is not a file name; expected a name as sample.py writes it")
    path = folder / name
    escapes = [path] if not inside(path, folder) else []
    if not escapes and path.is_dir():
        escapes = [p for p in image_files(path) if not inside(p, folder)]
    if escapes:
        raise ConfigError(f"{where}: {escapes[0]} leads outside the run folder {folder} (to {escapes[0].resolve()}); "
                          f"a run folder may only list its own files, so fix or regenerate samples.jsonl")
    return path


def read_prompt(value) -> Prompt:
    """A record's prompt: a string, or a travelling prompt {frame: text} (JSON made its frame keys strings)."""
    return {int(k): str(v) for k, v in value.items()} if isinstance(value, dict) else str(value)


def check_decoded(sample: VideoSample, shape: tuple) -> None:
    """The decoded video's (frames, height, width) must be what samples.jsonl describes; a mismatch means files
    from another run.

    GIFs are exempt from the frame count: Pillow merges identical consecutive frames when writing them.
    """
    if sample.shape is None:
        return
    expected, found = sample.shape, tuple(shape)
    if sample.path.suffix.lower() == ".gif":
        expected, found = expected[1:], found[1:]
    if tuple(expected) != tuple(found):
        raise ConfigError(f"{sample.path}: samples.jsonl records (frames, height, width) = {tuple(expected)}, the "
                          f"file holds {tuple(found)}; the run folder mixes files of different runs")


def load_runs(folders: list[Path | str]) -> list[VideoSample]:
    if not folders:
        raise ConfigError("--samples: give at least one sample run folder")
    folders = [Path(f) for f in folders]
    return [s for folder, label in zip(folders, run_labels(folders)) for s in load_run(folder, label)]


def load_references(folder: Path | str) -> tuple[list[Path], list[np.ndarray]]:
    """The identity's photos (files, float [0, 1] (H, W, 3) arrays), e.g. `dataset/<name>/`; sub-folders such as
    cached masks are ignored."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"--references: {folder} is not a folder; give the identity's photo folder "
                          f"(dataset/<name>)")
    files = image_files(folder)
    if not files:
        raise ConfigError(f"--references: {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files, [read_image(path, "reference photo") for path in files]


def group_key(sample: VideoSample, runs: list[str]) -> tuple[int, int, str]:
    """Table order: runs as given, stages in pipeline order."""
    stage = STAGE_ORDER.index(sample.stage) if sample.stage in STAGE_ORDER else len(STAGE_ORDER)
    return runs.index(sample.run), stage, sample.stage
