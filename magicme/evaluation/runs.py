"""What evaluation reads: sample run folders (their `samples.jsonl`, see docs/DESIGN.md) and reference photos.

Everything is checked here, before any model loads, so a typo costs seconds, not a CLIP download.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from magicme.errors import ConfigError
from magicme.images import IMAGE_SUFFIXES, image_files, read_image
from magicme.inspector import hf_model_present, inspect_files, is_hub_id
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
    identity: str | None = None  # a grid's identity (samples.jsonl `identity`), None outside grids


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
                                   None if None in shape else shape, folder, record.get("identity")))
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


def load_reference_sets(folder: Path | str, identities: list[str | None]) -> dict[str | None, tuple[list[Path],
                                                                                          list[np.ndarray]]]:
    """The reference photos of each identity the videos show: `folder` holding photos is one identity's set
    (key None, for every video; refused when the videos show several identities, which would be scored against one
    person), a folder of per-identity folders (`dataset/`, holding `<identity>/`) gives each its own set."""
    folder = Path(folder)
    named = sorted({i for i in identities if i is not None})
    if folder.is_dir() and image_files(folder):
        if len(named) > 1:
            raise ConfigError(f"--references: {folder} holds one identity's photos, but the runs show {len(named)} "
                              f"identities ({', '.join(named)}); give a folder holding a photo folder per identity "
                              f"({folder.parent}/<identity>/, e.g. dataset/) so each is scored against its own photos")
        return {None: load_references(folder)}
    if not folder.is_dir() or not any(p.is_dir() and image_files(p) for p in folder.iterdir()):
        return {None: load_references(folder)}  # its error: not a folder / no images
    if None in identities:
        raise ConfigError(f"--references: {folder} holds a photo folder per identity, but some videos have no "
                          f"identity (not a grid with identities:); give the identity's own photo folder instead")
    for name in named:
        if not (folder / name).is_dir():
            raise ConfigError(f"--references: {folder} has no folder {name}/ for identity {name!r}; add its photos "
                              f"there")
    return {name: load_references(folder / name) for name in named}


def group_key(sample: VideoSample, runs: list[str]) -> tuple[int, int, str]:
    """Table order: runs as given, stages in pipeline order."""
    stage = STAGE_ORDER.index(sample.stage) if sample.stage in STAGE_ORDER else len(STAGE_ORDER)
    return runs.index(sample.run), stage, sample.stage


def check_model_path(key: str, value: str) -> None:
    """A local folder with a config and weights, or a Hub id the user wrote (the only case where we go online)."""
    path = Path(value)
    if path.is_dir() and (path / "config.json").is_file():
        if not hf_model_present(path):
            raise ConfigError(f"{key}: {value} has a config.json but no weights (.safetensors/.bin); the download is "
                              f"incomplete: download the model there again (see docs/evaluation.md)")
        inspect_files([(key, value, f"{key} model")]).raise_first()  # every weights file from its header
        return
    if is_hub_id(value):
        return
    raise ConfigError(f"{key}: {value} is not a model folder (no config.json); download the model there (see "
                      f"docs/evaluation.md), use the tiny models (--config configs/tiny/eval.yaml) or give a "
                      f"Hugging Face Hub id such as openai/clip-vit-large-patch14")
