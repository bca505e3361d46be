"""`evaluate(...)`: score every video of one or more sample runs against an identity's photos and write the report.

Per video: CLIP-I, DINO (frames × reference photos), CLIP-T (frames × prompt without ID tokens), temporal
consistency (consecutive frames, CLIP) and dlib face identity. Per (run, stage): the mean over its videos.
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
from magicme.evaluation.faces import FaceEncoder, face_scores
from magicme.evaluation.metrics import (
    ClipEncoder, DinoEncoder, check_model_path, frame_indices, mean_similarity, temporal_consistency,
)
from magicme.evaluation.report import contact_sheet, write_reports
from magicme.evaluation.runs import check_decoded, group_key, load_references, load_runs
from magicme.prompts import strip_id_tokens, text_at
from magicme.rundir import check_output_dir
from magicme.video_io import read_video

log = logging.getLogger(__name__)

METRICS = ("clip_i", "clip_t", "dino", "temporal", "face_detected", "face_distance", "face_cosine", "face_match")


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
    for key, low in (("frames_per_video", 0), ("batch_size", 1), ("contact_frames", 1)):
        if getattr(settings, key) < low:
            raise ConfigError(f"{key}: {getattr(settings, key)} is below {low}; give a value ≥ {low}")
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


def evaluate(samples: list[Path | str], references: Path | str, out: Path | str | None = None,
             settings: EvalSettings | None = None, progress: bool = True) -> Path:
    """Score, then write metrics.json / metrics.csv / report.html into `out` (default `<first run>/eval/`)."""
    from magicme.devices import resolve_device  # imported here: it pulls in torch, not needed for input checks

    settings = settings or EvalSettings()
    videos = load_runs(samples)
    # checked before anything is scored: a bad --out must not cost a whole evaluation
    out = check_output_dir(out if out is not None else Path(samples[0]) / "eval", "--out")
    reference_names, reference_images = load_references(references)
    check_model_path("clip", settings.clip)
    check_model_path("dino", settings.dino)
    runs = list(dict.fromkeys(v.run for v in videos))
    videos.sort(key=lambda v: (*group_key(v, runs), v.index))

    device = resolve_device(settings.device)
    clip = ClipEncoder(settings.clip, device, settings.batch_size)
    dino = DinoEncoder(settings.dino, device, settings.batch_size)
    faces = FaceEncoder(settings.face_upsample) if settings.faces else None
    ref_clip, ref_dino = clip.images(reference_images), dino.images(reference_images)
    ref_faces = [faces.describe(i) for i in reference_images] if faces else []
    ref_faces = np.array([f for f in ref_faces if f is not None]).reshape(-1, 128)
    if faces and len(ref_faces) == 0:
        log.warning("no face found in any reference photo: face identity scores will be NaN")

    rows, sheets = [], []
    for video in tqdm(videos, desc="evaluating", unit="video", disable=not progress):
        frames = read_video(video.path)
        check_decoded(video, frames)
        indices = frame_indices(len(frames), settings.frames_per_video)
        picked = [frames[i] for i in indices]
        # each frame against the prompt in force at it (one text unless the prompt travels), ID tokens removed
        frame_texts = [strip_id_tokens(text_at(video.prompt, i)) for i in indices]
        eval_prompt = " → ".join(dict.fromkeys(frame_texts))
        frame_clip = clip.images(picked)
        row = {"run": video.run, "stage": video.stage, "index": video.index, "seed": video.seed,
               "gamma": video.gamma, "prompt": video.prompt, "eval_prompt": eval_prompt,
               "file": str(video.path), "frames": len(picked),
               "clip_i": mean_similarity(frame_clip, ref_clip),
               "clip_t": text_alignment(frame_clip, clip, frame_texts),
               "dino": mean_similarity(dino.images(picked), ref_dino),
               "temporal": temporal_consistency(frame_clip)}
        if faces:
            row.update({f"face_{k}": v for k, v in asdict(face_scores([faces.describe(f) for f in picked],
                                                                       ref_faces)).items()})
        else:
            row.update({m: float("nan") for m in METRICS if m.startswith("face_")})
        rows.append(row)
        sheets.append(contact_sheet(frames, settings.contact_frames))

    summary = {
        "settings": asdict(settings), "device": str(device), "runs": [str(s) for s in samples],
        "references": {"folder": str(references), "photos": reference_names, "faces_found": int(len(ref_faces))},
        "groups": aggregate(rows), "videos": rows,
    }
    write_reports(out, summary, sheets, reference_images)
    return out

