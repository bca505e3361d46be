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
from magicme.evaluation.faces import FaceEncoder, check_face_models, face_scores
from magicme.evaluation.report import contact_sheet, write_reports
from magicme.evaluation.runs import (
    VideoSample, check_decoded, check_model_path, group_key, load_reference_sets, load_runs,
)
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
    from magicme.evaluation.metrics import mean_similarity

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
    """One row per (run, stage, identity) in the order the rows first appear: mean of each metric over its videos,
    NaNs (e.g. no face found) left out; where a (run, stage) shows several identities, then a `mean` row: the mean
    over its identities' rows (each identity counts once, as the paper's tables average over identities)."""
    groups: dict[tuple[str, str, str | None], list[dict]] = {}
    for row in videos:
        groups.setdefault((row["run"], row["stage"], row.get("identity")), []).append(row)
    rows = [{"run": run, "stage": stage, "identity": identity, "videos": len(items),
             "frames": sum(r["frames"] for r in items), **{m: nanmean([r[m] for r in items]) for m in METRICS}}
            for (run, stage, identity), items in groups.items()]
    out = []
    for run, stage in dict.fromkeys((r["run"], r["stage"]) for r in rows):
        own = [r for r in rows if (r["run"], r["stage"]) == (run, stage)]
        out += own
        if len(own) > 1:
            out.append({"run": run, "stage": stage, "identity": "mean", "videos": sum(r["videos"] for r in own),
                        "frames": sum(r["frames"] for r in own), **{m: nanmean([r[m] for r in own]) for m in METRICS}})
    return out


class References:
    """One identity's reference photos and, once the models are loaded, their embeddings and face descriptors."""

    def __init__(self, files: list[Path], images: list[np.ndarray]):
        self.files, self.images, self.embedded = files, images, False

    def embed(self, scorer: "Scorer") -> None:
        """CLIP and DINO embeddings and face descriptors of the photos, once."""
        if self.embedded:
            return
        self.clip, self.dino = scorer.clip.images(self.images), scorer.dino.images(self.images)
        found = [scorer.faces.describe(i) for i in self.images] if scorer.faces else []
        self.faces = np.array([f for f in found if f is not None]).reshape(-1, 128)
        self.identity_faces = scorer.extended.reference_faces(self.images)
        if scorer.faces and len(self.faces) == 0:
            log.warning("no face found in any reference photo (%s): face identity scores will be NaN",
                        self.files[0].parent)
        self.embedded = True


class Scorer:
    """The metric models, made on first use: an evaluation whose videos are all cached loads no model."""

    def __init__(self, settings: EvalSettings, device):
        self.settings, self.device = settings, device
        self.loaded = False

    def load(self) -> None:
        from transformers.utils import logging as transformers_logging

        from magicme.evaluation.metrics import ClipEncoder, DinoEncoder  # torch + transformers: only when scoring

        transformers_logging.disable_progress_bar()  # weight-loading bars would bury the evaluation's own bar
        log.info("loading the metric models (CLIP %s, DINO %s%s)", self.settings.clip, self.settings.dino,
                 ", dlib faces" if self.settings.faces else "")
        settings = self.settings
        self.clip = ClipEncoder(settings.clip, self.device, settings.batch_size)
        self.dino = DinoEncoder(settings.dino, self.device, settings.batch_size)
        self.faces = FaceEncoder(settings.face_upsample) if settings.faces else None
        self.extended = ExtendedScorer(settings, str(self.device))
        self.loaded = True

    def score(self, video: VideoSample, frames: np.ndarray, references: References) -> dict:
        """The scores of one decoded video against its identity's references: what a cache entry keeps."""
        from magicme.evaluation.metrics import frame_indices, mean_similarity, temporal_consistency

        if not self.loaded:
            self.load()
        references.embed(self)
        indices = frame_indices(len(frames), self.settings.frames_per_video)
        picked = [frames[i] for i in indices]
        # each frame against the prompt in force at it (one text unless the prompt travels), ID tokens removed
        frame_texts = [strip_id_tokens(text_at(video.prompt, i)) for i in indices]
        frame_clip = self.clip.images(picked)
        metrics = {"clip_i": mean_similarity(frame_clip, references.clip),
                   "clip_t": text_alignment(frame_clip, self.clip, frame_texts),
                   "dino": mean_similarity(self.dino.images(picked), references.dino),
                   "temporal": temporal_consistency(frame_clip)}
        if self.faces:
            scores = face_scores([self.faces.describe(f) for f in picked], references.faces)
            metrics.update({f"face_{k}": v for k, v in asdict(scores).items()})
        else:
            metrics.update({m: float("nan") for m in METRICS if m.startswith("face_")})
        metrics.update(self.extended.score(frames, references.identity_faces))
        return {"eval_prompt": " → ".join(dict.fromkeys(frame_texts)), "frames": len(picked),
                "shape": list(frames.shape[:3]), "metrics": metrics,
                "sheet": contact_sheet(frames, self.settings.contact_frames),
                "reference_faces": int(len(references.faces))}


def evaluate(samples: list[Path | str], references: Path | str, out: Path | str | None = None,
             settings: EvalSettings | None = None, progress: bool = True) -> Path:
    """Score, then write metrics.json / metrics.csv / report.html into `out` (default `<first run>/eval/`).

    `references`: one identity's photo folder, or a folder of per-identity folders (each video of a grid is scored
    against its own identity's photos; `load_reference_sets`)."""
    settings = settings or EvalSettings()
    videos = load_runs(samples)
    # checked before anything is scored: a bad --out must not cost a whole evaluation
    out = check_output_dir(out if out is not None else Path(samples[0]) / "eval", "--out")
    sets = {name: References(*found) for name, found in
            load_reference_sets(references, [v.identity for v in videos]).items()}
    check_eval_models(settings)
    runs = list(dict.fromkeys(v.run for v in videos))
    videos.sort(key=lambda v: (*group_key(v, runs), v.identity or "", v.index))
    from magicme.devices import resolve_device  # imported here: it pulls in torch, not needed for input checks

    device = resolve_device(settings.device)
    scorer = Scorer(settings, device)
    contexts = {name: context_key(settings, device.type, refs.files) for name, refs in sets.items()} \
        if settings.cache else {}
    caches: dict[Path, EvalCache] = {}
    rows, sheets, computed, faces_found = [], [], 0, {}
    for video in tqdm(videos, desc="evaluating", unit="video", disable=not progress):
        name = video.identity if video.identity in sets else None
        refs, context = sets[name], contexts.get(name)
        cache = caches.setdefault(video.folder, EvalCache(video.folder)) if context else None
        key = entry_key(context, file_digest(video.path), video.prompt) if cache else None
        entry = cache.get(key) if cache else None
        if entry is not None:
            check_decoded(video, entry["shape"])
        else:
            frames = read_video(video.path)
            check_decoded(video, frames.shape[:3])
            entry = {"key": key, **scorer.score(video, frames, refs)}
            computed += 1
            if cache:
                cache.put(entry)
        faces_found[name] = entry["reference_faces"]
        rows.append({"run": video.run, "stage": video.stage, "identity": video.identity, "index": video.index,
                     "seed": video.seed, "gamma": video.gamma, "prompt": video.prompt,
                     "eval_prompt": entry["eval_prompt"], "file": str(video.path), "frames": entry["frames"],
                     **entry["metrics"]})
        sheets.append(entry["sheet"])

    one = list(sets) == [None]
    summary = {
        "settings": asdict(settings), "device": str(device), "runs": [str(s) for s in samples],
        "references": {"folder": str(references),
                       "photos": [p.name if one else f"{p.parent.name}/{p.name}" for r in sets.values()
                                  for p in r.files],
                       "faces_found": faces_found.get(None) if one else sum(faces_found.values())},
        "cache": {"computed": computed, "cached": len(rows) - computed},
        "groups": aggregate(rows), "videos": rows,
    }
    write_reports(out, summary, sheets, [image for r in sets.values() for image in r.images])
    return out


def check_eval_models(settings: EvalSettings) -> None:
    """Every metric model, before any loads: a CLIP and a DINO folder with weights (or a Hub id you wrote), and for
    the face metric dlib with face-recognition-models' files. A missing one costs seconds, not a model loading."""
    check_model_path("clip", settings.clip)
    check_model_path("dino", settings.dino)
    check_files(settings)
    if settings.faces:
        check_face_models()
