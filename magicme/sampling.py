"""A sampling run: validate the config, load the models once, render every prompt × seed, record everything.

Outputs go to `<output_dir>/<config-stem>-<timestamp>/` (layout in docs/DESIGN.md). The folder is created only
after the config is valid and the models have loaded, so a bad config leaves nothing behind.
"""

import json
import logging
import math
import re
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from tqdm.auto import tqdm

from magicme.config import load_config, resolved_config, validate_sample_config
from magicme.models import load_pipeline
from magicme.vcd.stages import prepare_input_video, run_face_stage, run_tiled_stage
from magicme.video_io import atomic_path, to_uint8, write_frames, write_video

log = logging.getLogger("magicme")
RANDOM_WEIGHTS_MARKER = "RANDOM_WEIGHTS.txt"  # written by the tiny-model builder
REFINE_STAGES = {"face": run_face_stage, "tiled": run_tiled_stage}


def slug(prompt: str, limit: int = 40) -> str:
    """File-name-safe words of a prompt: `a photo of embedding:ann woman, smiling` → `a-photo-of-ann-woman-smiling`."""
    words = re.findall(r"[a-z0-9]+", prompt.lower().replace("embedding:", ""))
    return "-".join(words)[:limit].strip("-") or "prompt"


def make_run_dir(output_dir: str, stem: str) -> Path:
    base = Path(output_dir) / f"{stem}-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir, n = base, 1
    while run_dir.exists():
        run_dir, n = base.with_name(f"{base.name}-{n}"), n + 1
    run_dir.mkdir(parents=True)
    return run_dir


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


def run_sampling(config_path: Path | str | None, overrides: list[str] | None = None, progress: bool = True) -> Path:
    """Render every sample of a config; returns the run folder."""
    cfg = load_config(config_path, overrides)
    samples, embeddings = validate_sample_config(cfg)
    source = prepare_input_video(cfg.input_video, cfg.frames, cfg.height, cfg.width) if cfg.input_video else None
    if uses_random_weights(cfg.model):
        log.warning("these models are the tiny RANDOM-WEIGHT test bundle: the videos will be noise. "
                    "Run `bash download_checkpoint.sh` and use configs/sample/example.yaml for real videos.")
    pipe = load_pipeline(cfg.model, embeddings, device=cfg.device, precision=cfg.precision, attention=cfg.attention,
                         vae_slicing=cfg.vae_slicing, cpu_offload=cfg.cpu_offload)
    stem = Path(config_path).stem if config_path else "sample"
    run_dir = make_run_dir(cfg.output_dir, stem)
    with atomic_path(run_dir / "config.yaml") as tmp:
        OmegaConf.save(resolved_config(cfg, samples), tmp)
    records, first_stage = [], []
    for index, sample in enumerate(tqdm(samples, desc="samples", disable=not progress)):
        generator = torch.Generator("cpu").manual_seed(sample["seed"])
        name = f"{index:04d}-{slug(sample['prompt'])}-{sample['seed']}"
        run = {"steps": cfg.steps, "guidance_scale": cfg.guidance_scale, "gamma": sample["gamma"]}
        video = None
        for stage in cfg.stages:
            start = time.perf_counter()
            info = {}
            if stage != "t2v":
                video, info = REFINE_STAGES[stage](pipe, video, sample["prompt"], sample["negative_prompt"],
                                                   generator, cfg[stage], run)
            elif source is not None:
                stage = "edit"
                video = pipe.video_to_video(source, sample["prompt"], sample["negative_prompt"], generator,
                                            gamma=sample["gamma"], strength=cfg.input_strength, steps=cfg.steps,
                                            guidance_scale=cfg.guidance_scale, progress=progress)
            else:
                video = pipe.text_to_video(
                    sample["prompt"], sample["negative_prompt"], generator, gamma=sample["gamma"], frames=cfg.frames,
                    height=cfg.height, width=cfg.width, steps=cfg.steps, guidance_scale=cfg.guidance_scale,
                    progress=progress,
                )
            seconds = time.perf_counter() - start
            stem = name if stage in ("t2v", "edit") else f"{name}_{stage}"
            files = write_video(run_dir / stem, video, cfg.fps, tuple(cfg.formats))
            if cfg.save_frames:
                files["frames"] = write_frames(run_dir / stem, video)
            records.append({"index": index, **sample, "stage": stage, "files": files, "frames": int(video.shape[0]),
                            "height": int(video.shape[1]), "width": int(video.shape[2]), "fps": cfg.fps,
                            "seconds": round(seconds, 3), **info})
            write_jsonl(run_dir / "samples.jsonl", records)
            if stage in ("t2v", "edit"):
                first_stage.append(thumbnail(video))
    write_grid(run_dir / "grid.gif", first_stage, cfg.fps)
    return run_dir
