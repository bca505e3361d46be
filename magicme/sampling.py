"""A sampling run: check the config, load the models once, put every sample through the configured stages, record
everything.

Outputs go to `<output_dir>/<config-stem>-<timestamp>/` (layout in docs/DESIGN.md). The folder is created only
after the config is valid, the stages' inputs are read and the models have loaded, so a bad config leaves nothing
behind.
"""

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from tqdm.auto import tqdm

from magicme.context import ContextSettings
from magicme.families import get_family
from magicme.freeu import install_freeu
from magicme.prompts import keyframes
from magicme.rundir import make_run_dir
from magicme.schema import check_sample_config, load_sample_config, prompt_tokens, resolved_config
from magicme.stages import STAGES, Sample, Stage
from magicme.video_io import atomic_path, to_uint8, write_frames, write_video

log = logging.getLogger("magicme")
RANDOM_WEIGHTS_MARKER = "RANDOM_WEIGHTS.txt"  # written by the tiny-model builder


def uses_random_weights(model: DictConfig) -> bool:
    """True when a model path lies in a tiny random-weight bundle: its output is noise, and we say so."""
    paths = [model.base, model.motion_module]
    return any((parent / RANDOM_WEIGHTS_MARKER).is_file() for p in paths for parent in Path(p).resolve().parents)


def thumbnail(video: np.ndarray, cell: int = 256) -> np.ndarray:
    """uint8 copy of a video downscaled to at most `cell` px, so the grid of a long run fits in memory."""
    h, w = video.shape[1:3]
    scale = min(1.0, cell / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.stack([np.asarray(Image.fromarray(f).resize(size, Image.Resampling.LANCZOS)) for f in to_uint8(video)])


def write_grid(path: Path, thumbnails: list[np.ndarray], fps: int) -> None:
    """All samples side by side in one GIF, for a quick look at a run."""
    frames = min(len(t) for t in thumbnails)
    cols = math.ceil(math.sqrt(len(thumbnails)))
    rows = math.ceil(len(thumbnails) / cols)
    ch, cw = max(t.shape[1] for t in thumbnails), max(t.shape[2] for t in thumbnails)
    sheets = []
    for f in range(frames):
        sheet = Image.new("RGB", (cols * cw, rows * ch))
        for i, thumbs in enumerate(thumbnails):
            sheet.paste(Image.fromarray(thumbs[f]), ((i % cols) * cw, (i // cols) * ch))
        sheets.append(sheet)
    with atomic_path(path) as tmp:
        sheets[0].save(tmp, format="GIF", save_all=True, append_images=sheets[1:], duration=round(1000 / fps), loop=0)


def write_jsonl(path: Path, records: list[dict]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))


def count_tokens(pipe, samples: list[Sample]) -> dict[str, int]:
    """Token count of every prompt text (identities expanded; each keyframe of a travelling prompt); too long a
    prompt is an error now, before anything is written. Nothing is cut: long prompts are encoded in chunks
    (magicme/prompt_encoding.py)."""
    counts = {}
    for s in samples:
        for key, prompt in (("prompt", s.prompt), ("negative_prompt", s.negative_prompt)):
            for text in keyframes(prompt).values():
                if text not in counts:
                    counts[text] = pipe.prompts.check_length(text, f"prompts: the {key} {text[:40]!r}…")
    return counts


def run_sampling(config_path: Path | str | None, overrides: list[str] | None = None, progress: bool = True,
                 cfg: DictConfig | None = None) -> Path:
    """Render every sample of a config (or of an already loaded `cfg`); returns the run folder."""
    cfg = cfg if cfg is not None else load_sample_config(config_path, overrides)
    samples, embeddings = check_sample_config(cfg)
    stages: list[Stage] = [STAGES[name](cfg, progress) for name in cfg.stages]
    for stage in stages:
        stage.prepare()
    if uses_random_weights(cfg.model):
        log.warning("these models are the tiny RANDOM-WEIGHT test bundle: the videos will be noise. "
                    "Run `bash download_checkpoint.sh` and use configs/sample/example.yaml for real videos.")
    pipe = get_family(cfg.model.family).load(cfg.model, embeddings, device=cfg.device, precision=cfg.precision,
                                             attention=cfg.attention, vae_slicing=cfg.vae_slicing,
                                             cpu_offload=cfg.cpu_offload)
    pipe.prompts.weighting = cfg.prompt_weighting
    pipe.context = ContextSettings(**cfg.context) if cfg.context is not None else None
    if cfg.freeu is not None:
        install_freeu(pipe.t2v.unet, **cfg.freeu)
    tokens = count_tokens(pipe, samples)
    for stage in stages:
        stage.setup(pipe)
    run_dir = make_run_dir(cfg.output_dir, Path(config_path).stem if config_path else "sample")
    with atomic_path(run_dir / "config.yaml") as tmp:
        OmegaConf.save(resolved_config(cfg, samples, tokens), tmp)
    records, first_videos = [], []
    for sample in tqdm(samples, desc="samples", disable=not progress):
        generator = torch.Generator("cpu").manual_seed(sample.seed)
        video = None
        for stage in stages:
            start = time.perf_counter()
            video, info = stage(pipe, video, sample, generator)
            seconds = time.perf_counter() - start
            stem = stage.output_stem(sample)
            files = write_video(run_dir / stem, video, cfg.fps, tuple(cfg.formats))
            if cfg.save_frames:
                files["frames"] = write_frames(run_dir / stem, video)
            records.append({"index": sample.index, "prompt": sample.prompt, "negative_prompt": sample.negative_prompt,
                            "seed": sample.seed, "gamma": sample.gamma, "tokens": prompt_tokens(sample.prompt, tokens),
                            "stage": stage.name, "files": files,
                            "frames": int(video.shape[0]), "height": int(video.shape[1]),
                            "width": int(video.shape[2]), "fps": cfg.fps, "seconds": round(seconds, 3), **info})
            write_jsonl(run_dir / "samples.jsonl", records)
            if stage.first:
                first_videos.append(thumbnail(video))
    write_grid(run_dir / "grid.gif", first_videos, cfg.fps)
    return run_dir
