"""A sampling run: check the config, load the models once, put every sample through the configured stages, record
everything.

Outputs go to `--run-dir DIR` (created, or continued: magicme/resume.py), else to a new
`<output_dir>/<config-stem>-<timestamp>/` (layout in docs/DESIGN.md). Under `accelerate launch` the processes share
the samples (magicme/sharding.py). A folder is created only after the config is valid, the stages' inputs are read
and the models have loaded, so a bad config leaves nothing behind.
"""

import contextlib
import glob
import logging
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image
from tqdm.auto import tqdm

from magicme import manifest
from magicme.context import ContextSettings
from magicme.evaluation.runs import FILE_PREFERENCE
from magicme.devices import resolve_device
from magicme.errors import ConfigError
from magicme.families import get_family
from magicme.freeu import install_freeu
from magicme.prompt_length import count_prompt_tokens
from magicme.resume import RunFolder
from magicme.schema import check_sample_config, load_sample_config, prompt_tokens, resolved_config
from magicme.sharding import Launch, assign, sample_cost
from magicme.speed import (
    attention_kernel, attention_shape, compile_unet, models_folder, quantize_fp8, remembered_sdpa, use_compile_cache,
)
from magicme.stages import STAGES, Sample, Stage
from magicme.video_io import atomic_path, read_video, to_uint8, write_frames, write_video

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


def write_grid(path: Path, thumbnails: list[np.ndarray], fps: int, width: int = 2048) -> None:
    """All samples side by side in one GIF, for a quick look at a run; cells shrink so a big grid stays `width` px."""
    frames = min(len(t) for t in thumbnails)
    cols = math.ceil(math.sqrt(len(thumbnails)))
    rows = math.ceil(len(thumbnails) / cols)
    ch, cw = max(t.shape[1] for t in thumbnails), max(t.shape[2] for t in thumbnails)
    scale = min(1.0, width / (cols * max(ch, cw)))
    ch, cw = max(1, round(ch * scale)), max(1, round(cw * scale))
    sheets = []
    for f in range(frames):
        sheet = Image.new("RGB", (cols * cw, rows * ch))
        for i, thumbs in enumerate(thumbnails):
            cell = Image.fromarray(thumbs[f])
            cell = cell if scale == 1.0 else cell.resize((cw, ch), Image.Resampling.LANCZOS)
            sheet.paste(cell, ((i % cols) * cw, (i // cols) * ch))
        sheets.append(sheet)
    with atomic_path(path) as tmp:
        sheets[0].save(tmp, format="GIF", save_all=True, append_images=sheets[1:], duration=round(1000 / fps), loop=0)


def first_stage_video(run_dir: Path, record: dict) -> np.ndarray:
    """A first-stage video read back from its files (lossless frames first), so grid.gif is the same whichever
    process rendered a sample and whether the run was interrupted."""
    files = record["files"]
    kind = next(k for k in FILE_PREFERENCE if k in files)
    return read_video(run_dir / files[kind])


def count_tokens(pipe, samples: list[Sample]) -> dict[str, int]:
    """Token count of every prompt text by the loaded pipeline's encoder (checked before loading already, from the
    tokenizer files: magicme/prompt_length.py; a Hub base is checked here, before anything is written). Nothing is
    cut: long prompts are encoded in chunks (magicme/prompt_encoding.py)."""
    return count_prompt_tokens(pipe.prompts, samples)


def load_pipeline(cfg: DictConfig, embeddings: dict[str, Path], device):
    """The run's pipeline: the model family's loader with the run's identities, precision, attention and memory
    options, FreeU installed, the UNet's linear layers in float8 (`fp8`) and its blocks compiled (`compile`)."""
    pipe = get_family(cfg.model.family).load(cfg.model, embeddings, device=device, precision=cfg.precision,
                                             attention=cfg.attention, vae_slicing=cfg.vae_slicing,
                                             cpu_offload=cfg.cpu_offload)
    if cfg.freeu is not None:
        install_freeu(pipe.t2v.unet, **cfg.freeu)
    if cfg.fp8:
        quantize_fp8(pipe.t2v.unet)  # before compiling: the compiled code then holds the float8 matmuls
    if cfg.compile:
        cache = use_compile_cache(models_folder(str(cfg.model.base)))
        blocks = compile_unet(pipe.t2v.unet, cfg.compile_backend)
        log.warning("compile: %d UNet blocks compile on their first call at each new shape (minutes the first "
                    "time, see docs/speed.md); the compiled code is cached in %s for later runs", blocks, cache)
    return pipe


def run_sampling(config_path: Path | str | None, overrides: list[str] | None = None, progress: bool = True,
                 cfg: DictConfig | None = None, run_dir: Path | str | None = None, force_new: bool = False,
                 load=load_pipeline) -> Path:
    """Render every sample of a config (or of an already loaded `cfg`) not finished yet in `run_dir`, sharing them
    among the processes of an `accelerate launch`; returns the run folder. `load(cfg, embeddings, device)` makes the
    pipeline (`load_pipeline`); a long-lived caller (the web app) passes one that keeps it across runs."""
    cfg = cfg if cfg is not None else load_sample_config(config_path, overrides)
    launch = Launch()
    samples, embeddings = check_sample_config(cfg)
    device = launch.device(cfg.device)
    stages: list[Stage] = [STAGES[name](cfg, progress) for name in cfg.stages]
    for stage in stages:
        stage.prepare()
    folder = RunFolder(run_dir, force_new)
    try:
        samples = launch.on_main(lambda: folder.claim(cfg, samples, embeddings))
        if launch.is_main and uses_random_weights(cfg.model):
            log.warning("these models are the tiny RANDOM-WEIGHT test bundle: the videos will be noise. "
                        "Run `bash download_checkpoint.sh` and use configs/sample/example.yaml for real videos.")
        pipe = load(cfg, embeddings, device)
        pipe.prompts.weighting = cfg.prompt_weighting
        pipe.context = ContextSettings(**cfg.context) if cfg.context is not None else None
        kernel = attention_choice(pipe, cfg, device)
        tokens = count_tokens(pipe, samples)
        for stage in stages:
            stage.setup(pipe)
        stem = Path(config_path).stem if config_path else "sample"
        out, todo = launch.on_main(lambda: start_run(folder, cfg, samples, tokens, stem, stages, kernel))
        share = assign([sample_cost(cfg, samples[i]) for i in todo], launch.world)[launch.rank]
        with attention_kernel(kernel) if kernel else contextlib.nullcontext():
            render(pipe, cfg, stages, [samples[todo[i]] for i in share], tokens, out, launch.rank, progress,
                   {"attention_kernel": kernel or cfg.attention})
        launch.wait_for_everyone()
        if launch.is_main:
            with writing(out):
                finish_run(out, cfg, samples)
    finally:
        folder.release()
    return out


def attention_choice(pipe, cfg: DictConfig, device) -> str | None:
    """The attention kernel of this run (`sdpa_backend`, measured when auto; None with xformers)."""
    if cfg.attention != "sdpa":
        return None
    if cfg.sdpa_backend != "auto":
        return cfg.sdpa_backend
    frames = cfg.frames if cfg.context is None else min(cfg.frames, cfg.context.length)
    shape = attention_shape(cfg.width, cfg.height, frames, cfg.guidance_scale > 1)
    kernel = remembered_sdpa(shape, resolve_device(device), pipe.t2v.unet.dtype, models_folder(str(cfg.model.base)))
    log.info("sdpa_backend: auto uses %s (the fastest measured on attention of shape %s)", kernel, shape)
    return kernel


def start_run(folder: RunFolder, cfg: DictConfig, samples: list[Sample], tokens: dict[str, int],
              stem: str, stages: list[Stage], kernel: str | None) -> tuple[Path, list[int]]:
    """The main process opens the folder, saves what the stages derived from their inputs and merges what earlier
    runs finished; the run folder and the positions of the samples still to render. config.yaml names the
    attention kernel `auto` chose: re-running it then computes with the same kernel, bit for bit."""
    resolved = resolved_config(cfg, samples, tokens)
    if kernel is not None:
        resolved.sdpa_backend = kernel
    with writing(Path(folder.path or cfg.output_dir)):
        out = folder.open(cfg, resolved, stem)
        for stage in stages:
            stage.save_inputs(out)
        manifest.merge(out, samples)
    done = manifest.finished_videos(out, manifest.read_records(out))
    todo = [i for i, sample in enumerate(samples) if not manifest.finished(sample, done)]
    if len(todo) < len(samples):
        log.info("%d of %d samples already finished in %s", len(samples) - len(todo), len(samples), out)
    return out, todo


def render(pipe, cfg: DictConfig, stages: list[Stage], samples: list[Sample], tokens: dict[str, int], out: Path,
           rank: int, progress: bool, run_info: dict) -> None:
    """Put this process's samples through the stages; each stage's files, then its record, as soon as it is done."""
    shard = manifest.ShardWriter(out, rank)
    try:
        for sample in tqdm(samples, desc=f"samples (process {rank})", disable=not progress):
            generator = torch.Generator("cpu").manual_seed(sample.seed)
            video = None
            for stage in stages:
                start = time.perf_counter()
                video, info = stage(pipe, video, sample, generator)
                seconds = time.perf_counter() - start
                stem = stage.output_stem(sample)
                with writing(out, stem):
                    files = write_video(out / stem, video, cfg.fps, tuple(cfg.formats))
                    if cfg.save_frames:
                        files["frames"] = write_frames(out / stem, video)
                    shard.append({
                        "index": sample.index, "name": stem, "hash": sample.stage_hash(stage.name),
                        "identity": sample.identity, "prompt": sample.prompt, "negative_prompt": sample.negative_prompt,
                        "seed": sample.seed, "gamma": sample.gamma, "tokens": prompt_tokens(sample.prompt, tokens),
                        "stage": stage.name, "files": files, "frames": int(video.shape[0]),
                        "height": int(video.shape[1]), "width": int(video.shape[2]), "fps": cfg.fps,
                        "seconds": round(seconds, 3), **run_info, **info})
    finally:
        shard.close()


@contextlib.contextmanager
def writing(out: Path, stem: str | None = None):
    """An OSError while writing (disk full, permissions) is one `ConfigError` naming the run folder; the files of
    the half-written sample `stem` are removed (its record is not written), so `--run-dir` renders it again; nothing
    else of the run is touched."""
    try:
        yield
    except OSError as err:
        if stem is not None:
            for path in [*out.glob(f"{glob.escape(stem)}.*"), out / stem]:
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
        what = f"the files of {stem}" if stem is not None else "the run's files"
        raise ConfigError(f"{out}: cannot write {what} ({err.strerror or type(err).__name__}); free space or fix "
                          f"the folder's permissions, then run again with --run-dir {out}: finished samples are "
                          "kept") from err


def finish_run(out: Path, cfg: DictConfig, samples: list[Sample]) -> None:
    """samples.jsonl from every process's shard, and grid.gif of the first stages, in grid order."""
    records = manifest.merge(out, samples)
    first = [r for r in records if r["stage"] == cfg.stages[0]]
    if first:
        write_grid(out / "grid.gif", [thumbnail(first_stage_video(out, r)) for r in first], cfg.fps)
