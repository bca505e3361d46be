"""`evaluate(...)`: score every video of one or more sample runs against an identity's photos and write the report.

Per video: CLIP-I, DINO (frames × reference photos), CLIP-T (frames × prompt without ID tokens), temporal
consistency (consecutive frames, CLIP) and dlib face identity. Per (run, stage): the mean over its videos.
A video scored before with the same models and settings is taken from its run's cache (`magicme.evaluation.cache`)
without being decoded; the models load only if some video is new.
"""

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from tqdm import tqdm

from magicme.configfile import load_structured
from magicme.errors import ConfigError
from magicme.evaluation.cache import EvalCache, context_key, entry_key, file_digest
from magicme.evaluation.extended import EXTENDED_COLUMNS, ExtendedScorer, check_files
from magicme.evaluation.faces import FaceEncoder, face_scores
from magicme.evaluation.metrics import (
    ClipEncoder, DinoEncoder, check_model_path, frame_indices, mean_similarity, temporal_consistency,
)
from magicme.evaluation.report import contact_sheet, write_reports
from magicme.evaluation.runs import VideoSample, check_decoded, group_key, load_references, load_runs
from magicme.prompts import strip_id_tokens, text_at
from magicme.rundir import check_output_dir
from magicme.video_io import read_video

log = logging.getLogger(__name__)

METRICS = ("clip_i", "clip_t", "dino", "temporal", "face_detected", "face_distance", "face_cosine", "face_match",
           *EXTENDED_COLUMNS)


@dataclass
class EvalSettings:
    clip: str = "models/eval/clip-vit-large-patch14"  # local copy of openai/clip-vit-large-patch14, or a Hub id
    dino: str = "models/eval/dino-vits16"  # local copy of facebook/dino-vits16, or a Hub id
    device: str = "auto"  # auto (cuda, mps, cpu), cpu, cuda, ...
    frames_per_video: int = 0  # evenly spaced frames scored per video; 0 = all
    faces: bool = True  # dlib face identity (needs the `faces` extra)
    face_upsample: int = 1  # dlib HOG upsampling: 1 finds faces down to ~40 px in a 512² frame
    batch_size: int = 32
    contact_frames: int = 8  # frames per video on the report's contact sheet
    cache: bool = True  # reuse the per-video scores kept in <run>/eval_cache.jsonl, add the new ones there
    arcface: str = ""  # insightface antelopev2 / buffalo_l folder: FaceSim-Arc, identity drift, copy-paste; "" = off
    curricularface: str = ""  # CurricularFace IR-101 state dict: FaceSim-Cur; "" = off
    facesim_frames: int = 16  # frames sampled per video for FaceSim (ConsisID 16, OpenS2V-Eval 32)
    drift_window: float = 0.25  # identity drift: share of the sampled frames in the first and in the last window
    motion: bool = True  # motion amplitude and smoothness from OpenCV optical flow


def text_alignment(frame_clip, clip, frame_texts: list[str]) -> float:
    """CLIP-T: mean cosine of each frame with its own prompt text (all frames share one text without travel)."""
    texts = list(dict.fromkeys(frame_texts))
    if len(texts) == 1:
        return mean_similarity(frame_clip, clip.texts(texts))
    features = clip.texts(texts)
    return float(np.mean([mean_similarity(frame_clip[i:i + 1], features[texts.index(t):texts.index(t) + 1])
                          for i, t in enumerate(frame_texts)]))


def load_settings(path: Path | str | None, overrides: dict | None = None) -> EvalSettings:
    """Defaults ← YAML (configs/eval/*.yaml, keys as EvalSettings) ← command-line values that were given."""
    settings = EvalSettings(**OmegaConf.to_container(load_structured(EvalSettings, path, overrides or {})))
    for key, low in (("frames_per_video", 0), ("batch_size", 1), ("contact_frames", 1), ("facesim_frames", 1)):
        if getattr(settings, key) < low:
            raise ConfigError(f"{key}: {getattr(settings, key)} is below {low}; give a value ≥ {low}")
    if not 0 < settings.drift_window <= 0.5:
        raise ConfigError(f"drift_window: {settings.drift_window} is not in (0, 0.5]; give the share of frames per "
                          f"window, e.g. 0.25")
    return settings


def nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def aggregate(videos: list[dict]) -> list[dict]:
    """One row per (run, stage) in the order the rows first appear: mean of each metric over its videos, NaNs
    (e.g. no face found) left out."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in videos:
        groups.setdefault((row["run"], row["stage"]), []).append(row)
    return [{"run": run, "stage": stage, "videos": len(rows), "frames": sum(r["frames"] for r in rows),
             **{m: nanmean([r[m] for r in rows]) for m in METRICS}}
            for (run, stage), rows in groups.items()]


class Scorer:
    """The metric models and the references' embeddings, made on first use: an evaluation whose videos are all
    cached loads no model."""

    def __init__(self, settings: EvalSettings, device, reference_images: list[np.ndarray]):
        self.settings, self.device, self.reference_images = settings, device, reference_images
        self.loaded = False

    def load(self) -> None:
        settings = self.settings
        self.clip = ClipEncoder(settings.clip, self.device, settings.batch_size)
        self.dino = DinoEncoder(settings.dino, self.device, settings.batch_size)
        self.faces = FaceEncoder(settings.face_upsample) if settings.faces else None
        self.extended = ExtendedScorer(settings, self.reference_images, str(self.device))
        self.ref_clip, self.ref_dino = self.clip.images(self.reference_images), self.dino.images(self.reference_images)
        found = [self.faces.describe(i) for i in self.reference_images] if self.faces else []
        self.ref_faces = np.array([f for f in found if f is not None]).reshape(-1, 128)
        if self.faces and len(self.ref_faces) == 0:
            log.warning("no face found in any reference photo: face identity scores will be NaN")
        self.loaded = True

    def score(self, video: VideoSample, frames: np.ndarray) -> dict:
        """The scores of one decoded video: what a cache entry keeps."""
        if not self.loaded:
            self.load()
        indices = frame_indices(len(frames), self.settings.frames_per_video)
        picked = [frames[i] for i in indices]
        # each frame against the prompt in force at it (one text unless the prompt travels), ID tokens removed
        frame_texts = [strip_id_tokens(text_at(video.prompt, i)) for i in indices]
        frame_clip = self.clip.images(picked)
        metrics = {"clip_i": mean_similarity(frame_clip, self.ref_clip),
                   "clip_t": text_alignment(frame_clip, self.clip, frame_texts),
                   "dino": mean_similarity(self.dino.images(picked), self.ref_dino),
                   "temporal": temporal_consistency(frame_clip)}
        if self.faces:
            scores = face_scores([self.faces.describe(f) for f in picked], self.ref_faces)
            metrics.update({f"face_{k}": v for k, v in asdict(scores).items()})
        else:
            metrics.update({m: float("nan") for m in METRICS if m.startswith("face_")})
        metrics.update(self.extended.score(frames))
        return {"eval_prompt": " → ".join(dict.fromkeys(frame_texts)), "frames": len(picked),
                "shape": list(frames.shape[:3]), "metrics": metrics,
                "sheet": contact_sheet(frames, self.settings.contact_frames),
                "reference_faces": int(len(self.ref_faces))}


def evaluate(samples: list[Path | str], references: Path | str, out: Path | str | None = None,
             settings: EvalSettings | None = None, progress: bool = True) -> Path:
    """Score, then write metrics.json / metrics.csv / report.html into `out` (default `<first run>/eval/`)."""
    from magicme.devices import resolve_device  # imported here: it pulls in torch, not needed for input checks

    settings = settings or EvalSettings()
    videos = load_runs(samples)
    # checked before anything is scored: a bad --out must not cost a whole evaluation
    out = check_output_dir(out if out is not None else Path(samples[0]) / "eval", "--out")
    reference_files, reference_images = load_references(references)
    check_model_path("clip", settings.clip)
    check_model_path("dino", settings.dino)
    check_files(settings)
    runs = list(dict.fromkeys(v.run for v in videos))
    videos.sort(key=lambda v: (*group_key(v, runs), v.index))

    device = resolve_device(settings.device)
    scorer = Scorer(settings, device, reference_images)
    context = context_key(settings, device.type, reference_files) if settings.cache else None
    caches: dict[Path, EvalCache] = {}
    rows, sheets, computed, faces_found = [], [], 0, None
    for video in tqdm(videos, desc="evaluating", unit="video", disable=not progress):
        cache = caches.setdefault(video.folder, EvalCache(video.folder)) if context else None
        key = entry_key(context, file_digest(video.path), video.prompt) if cache else None
        entry = cache.get(key) if cache else None
        if entry is not None:
            check_decoded(video, entry["shape"])
        else:
            frames = read_video(video.path)
            check_decoded(video, frames.shape[:3])
            entry = {"key": key, **scorer.score(video, frames)}
            computed += 1
            if cache:
                cache.put(entry)
        faces_found = entry["reference_faces"]
        rows.append({"run": video.run, "stage": video.stage, "index": video.index, "seed": video.seed,
                     "gamma": video.gamma, "prompt": video.prompt, "eval_prompt": entry["eval_prompt"],
                     "file": str(video.path), "frames": entry["frames"], **entry["metrics"]})
        sheets.append(entry["sheet"])

    summary = {
        "settings": asdict(settings), "device": str(device), "runs": [str(s) for s in samples],
        "references": {"folder": str(references), "photos": [p.name for p in reference_files],
                       "faces_found": faces_found},
        "cache": {"computed": computed, "cached": len(rows) - computed},
        "groups": aggregate(rows), "videos": rows,
    }
    write_reports(out, summary, sheets, reference_images)
    return out
