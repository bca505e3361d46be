"""Per-video metrics kept beside a sample run, `<run>/eval_cache.jsonl`, so evaluating a growing or resumed run
scores only the videos it has not scored before.

An entry's key is the hash of everything its numbers depend on: the video file's content (sha256; a frame folder's
images in order), its prompt, the reference photos' bytes, and a fingerprint of the metric models (each model
folder's file names, sizes and contents — the first and last MiB of large weight files) with the settings that
change a score (frames scored, face upsampling, batch size, contact sheet size, device type) and `METRICS_VERSION`.
A different video, metric model or setting is another key: nothing stale is ever read, old entries just stay.

The file is only appended to, one whole JSON line per video and write, so evaluations of the same run may append
at once and a killed one loses at most its last line (a torn line is skipped when read).
"""

import hashlib
import json
import logging
import os
from dataclasses import asdict
from pathlib import Path

from magicme.images import image_files
from magicme.inspector import is_hub_id

log = logging.getLogger(__name__)

CACHE_NAME = "eval_cache.jsonl"
METRICS_VERSION = 2  # raise when the metric code changes what a video scores: every cached entry is then unused
_SAMPLE_BYTES = 1 << 20
_CHUNK = 1 << 22


def file_digest(path: Path) -> str:
    """sha256 of a video file, or of a frame folder: its image names and bytes, in order."""
    digest = hashlib.sha256()
    for file in image_files(path) if path.is_dir() else [path]:
        digest.update(file.name.encode() + b"\0" if path.is_dir() else b"")
        with file.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def model_fingerprint(model: str) -> str:
    """A model folder: every file's relative name and size, the whole of small files and the first and last MiB
    of large ones (weights of another training differ there; hashing gigabytes each run would cost seconds).
    A Hub id: the id."""
    path = Path(model)
    if not path.is_dir():
        return f"hub:{model}" if is_hub_id(model) else f"missing:{model}"
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
        size = file.stat().st_size
        digest.update(f"{file.relative_to(path)}\0{size}\0".encode())
        with file.open("rb") as handle:
            digest.update(handle.read(_SAMPLE_BYTES))
            if size > 2 * _SAMPLE_BYTES:
                handle.seek(size - _SAMPLE_BYTES)
                digest.update(handle.read(_SAMPLE_BYTES))
    return digest.hexdigest()


def face_models_fingerprint() -> str:
    """The dlib version and the face-recognition-models files (detector, landmarks, descriptor network)."""
    import warnings

    from magicme.faces import import_dlib

    with warnings.catch_warnings():  # face_recognition_models imports the deprecated pkg_resources
        warnings.simplefilter("ignore")
        import face_recognition_models as models
    weights = Path(models.__file__).parent / "models"
    return f"dlib {import_dlib('face metric').__version__} {model_fingerprint(str(weights))}"


def file_or_folder_fingerprint(path: str) -> str:
    """A model folder (an insightface pack) as `model_fingerprint`, a single weights file by its digest."""
    return file_digest(Path(path)) if Path(path).is_file() else model_fingerprint(path)


def context_key(settings, device_type: str, reference_files: list[Path]) -> str:
    """The part of every entry's key shared by a whole evaluation: models, settings, device and references."""
    scoring = {k: v for k, v in asdict(settings).items() if k not in ("clip", "dino", "device", "cache")}
    context = {
        "version": METRICS_VERSION, "settings": scoring, "device": device_type,
        "clip": model_fingerprint(settings.clip), "dino": model_fingerprint(settings.dino),
        "faces": face_models_fingerprint() if settings.faces else None,
        "identity_models": {k: file_or_folder_fingerprint(getattr(settings, k))
                            for k in ("arcface", "curricularface") if getattr(settings, k)},
        "references": [[p.name, file_digest(p)] for p in reference_files],
    }
    return hashlib.sha256(json.dumps(context, sort_keys=True).encode()).hexdigest()


def entry_key(context: str, video_digest: str, prompt) -> str:
    return hashlib.sha256(json.dumps([context, video_digest, prompt], sort_keys=True).encode()).hexdigest()


class EvalCache:
    """The entries of one run folder's cache file, read once; `put` appends one."""

    def __init__(self, run_folder: Path):
        self.path = run_folder / CACHE_NAME
        self.entries: dict[str, dict] = {}
        lines = self.path.read_text(errors="replace").splitlines() if self.path.is_file() else []
        for line in lines:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # the torn last line of a killed evaluation
            if isinstance(entry, dict) and isinstance(entry.get("key"), str):
                self.entries[entry["key"]] = entry

    def get(self, key: str) -> dict | None:
        return self.entries.get(key)

    def put(self, entry: dict) -> None:
        """Append `entry` (with its "key") as one line in one write, after a newline if a killed write left the
        file without one; a run folder we may not write in is evaluated without caching."""
        data = (json.dumps(entry, ensure_ascii=False) + "\n").encode()
        try:
            with self.path.open("ab+") as handle:  # every write goes to the end, whatever the position
                if handle.seek(0, os.SEEK_END) > 0:
                    handle.seek(-1, os.SEEK_END)
                    if handle.read(1) != b"\n":
                        data = b"\n" + data
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as err:
            log.warning("cannot write %s (%s): this video is scored again next time", self.path, err)
            return
        self.entries[entry["key"]] = entry
