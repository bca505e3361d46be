"""The ID-token training loop: one explicit accelerate loop, in the spirit of diffusers' textual_inversion example.

Only the N identity vectors learn (`magicme.training.tokens.IdentityEmbedding`); text encoder, UNet and VAE are
frozen, so the vocabulary stays bit-identical and gradient clipping acts on the identity (the original clipped the
UNet, which had no gradient). Every random draw of step k comes from generators seeded by (seed, k)
(`magicme.training.data`), so a resumed run continues exactly where it stopped.

One process at a time writes a run folder (`magicme.rundir.RunLock`). `--resume` continues only a genuine run
folder, from a state file that was read through the safe reader and checked before anything is written.
"""

import contextlib
import json
import logging
import math
import random
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, broadcast_object_list, set_seed
from diffusers import DDPMScheduler
from omegaconf import DictConfig, OmegaConf
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from magicme.checkpoint_io import load_checkpoint, save_torch
from magicme.embeddings import save_embedding
from magicme.errors import ConfigError
from magicme.families.sd15 import SD15_BETAS, load_base, load_vae
from magicme.families.sdxl import load_base as load_sdxl_base
from magicme.prompts import fill_identity, slug
from magicme.rundir import RunLock, make_run_dir, remove_stale_temp_files
from magicme.segmentation import ClipSegSegmenter, model_identity
from magicme.speed import allow_tf32, compile_unet, models_folder, use_compile_cache
from magicme.training.config import identity_width
from magicme.training.data import (
    Photo, TrainImage, TrainingBatches, caption_ids, derive_seed, load_training_images, save_overlays, working_size,
)
from magicme.training.loss import latent_mask, masked_mse
from magicme.training.sdxl import (
    SDXLTextEncoders, save_sdxl_vectors, sdxl_caption_ids, sdxl_unet_inputs, vae_dtype,
)
from magicme.training.tokens import (
    IdentityEmbedding, Vocabulary, add_identity_tokens, add_sdxl_identity_tokens, bake_identity, token_names,
)
from magicme.video_io import atomic_path

log = logging.getLogger("magicme.train")
DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
STATE_NAME = re.compile(r"state-step-(\d+)\.pt")
# SD-XL base's training schedule (its scheduler config): identities are learnt on the image model, as it was trained
# (sampling uses AnimateDiff SD-XL's own betas, magicme/families/sdxl.py)
SDXL_TRAIN_BETAS = {**SD15_BETAS, "beta_schedule": "scaled_linear"}
STATE_KEYS = ("name", "seed", "step", "vectors", "optimizer", "rng", "losses")
SCALER_KEYS = ("scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker")
LOSS_READ_EVERY = 10  # steps between reads of the loss from the device (and at every checkpoint and validation)
STATE_ERRORS = (KeyError, TypeError, ValueError, IndexError, RuntimeError, AttributeError)
StepHook = Callable[[int, list[float], Path], None]  # (step, losses so far, run folder), after every step


class TrainingDiverged(Exception):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def sd15_unet_inputs(text_encoder, input_ids: torch.Tensor, time_ids: torch.Tensor | None,
                     dtype: torch.dtype) -> dict:
    """The SD1.5 UNet's conditioning: the text encoder's last hidden states (SD1.5 has no added conditioning)."""
    return {"encoder_hidden_states": text_encoder(input_ids)[0].to(dtype)}


@dataclass
class DiffusionLoss:
    """The frozen half of a training step: VAE encoding, the original's noise schedule (AnimateDiff's linear betas), the UNet and the masked
    ε-loss. Only `text_encoder` (holding the identity vectors) carries gradients. `unet_inputs` makes the UNet's
    conditioning from the text encoder(s) (SD-XL: `training.sdxl.sdxl_unet_inputs`); `vae_dtype` is the VAE's own
    dtype where it differs from `dtype` (SD-XL's stock VAE under fp16: float32)."""

    vae: torch.nn.Module
    unet: torch.nn.Module
    scheduler: DDPMScheduler
    noise_offset: float
    dtype: torch.dtype
    vae_dtype: torch.dtype | None = None
    unet_inputs: Callable[..., dict] = sd15_unet_inputs

    def __call__(self, text_encoder, pixels: torch.Tensor, masks: torch.Tensor, input_ids: torch.Tensor,
                 generator: torch.Generator, autocast=contextlib.nullcontext,
                 time_ids: torch.Tensor | None = None) -> torch.Tensor:
        device, vae_dtype = pixels.device, self.vae_dtype or self.dtype
        with torch.no_grad():
            posterior = self.vae.encode(pixels.to(vae_dtype)).latent_dist
            eps = torch.randn(posterior.mean.shape, generator=generator).to(device, vae_dtype)
            latents = ((posterior.mean + posterior.std * eps) * self.vae.config.scaling_factor).to(self.dtype)
        b, c = latents.shape[:2]
        noise = torch.randn(latents.shape, generator=generator)
        # the original's noise offset: one extra random value per (sample, channel), shared by all pixels
        noise = (noise + self.noise_offset * torch.randn((b, c, 1, 1), generator=generator)).to(device, self.dtype)
        timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (b,), generator=generator).to(device)
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        with autocast():
            pred = self.unet(noisy, timesteps, **self.unet_inputs(text_encoder, input_ids.to(device), time_ids,
                                                                 self.dtype)).sample
        return masked_mse(pred, noise, latent_mask(masks, latents.shape[-2:]))


def global_rng_state() -> dict:
    """Library code may draw from the global generators (e.g. dropout); their states go into checkpoints too."""
    name, keys, position, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [name, keys.tolist(), position, has_gauss, gauss],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def python_rng_state(saved) -> tuple:
    """`random.setstate`'s argument from its saved form (the checkpoint keeps the internal state as a list)."""
    version, internal, gauss = saved
    return version, tuple(internal), gauss


def numpy_rng_state(saved) -> tuple:
    """`np.random.set_state`'s argument from its saved form (the key array is kept as a list)."""
    name, keys, position, has_gauss, gauss = saved
    return name, np.asarray(keys, dtype=np.uint32), position, has_gauss, gauss


def set_global_rng_state(state: dict) -> None:
    random.setstate(python_rng_state(state["python"]))
    np.random.set_state(numpy_rng_state(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class ResumePoint:
    """The state a resumed run continues from, already read and checked."""

    run_dir: Path
    path: Path
    state: dict
    skipped: list[str] = field(default_factory=list)  # why newer states were passed over (logged into train.log)


def state_files(run_dir: Path) -> list[tuple[int, Path]]:
    """The run's `checkpoints/state-step-N.pt`, highest step first: the step in the name, not the file's time, says
    which is newest (a copied or touched file keeps its step)."""
    found = ((STATE_NAME.fullmatch(p.name), p) for p in (run_dir / "checkpoints").glob("state-step-*.pt"))
    return sorted(((int(match[1]), path) for match, path in found if match), reverse=True)


def is_run_dir(folder: Path) -> bool:
    """What train.py makes: `config.yaml`, written at the start, beside a `checkpoints/` folder."""
    return (folder / "config.yaml").is_file() and (folder / "checkpoints").is_dir()


def newest_run(output_dir: str, name: str) -> Path | None:
    """The most recently started run of `name` that has a state, or None. Run folders are named by their start
    time, `<name>-YYYYmmdd-HHMMSS[-N]`, so another identity such as `<name>-b` never matches."""
    pattern = re.compile(rf"{re.escape(name)}-(\d{{8}}-\d{{6}})(?:-(\d+))?")
    folder = Path(output_dir)
    runs = []
    for run in folder.iterdir() if folder.is_dir() else []:
        match = pattern.fullmatch(run.name)
        if match and is_run_dir(run) and state_files(run):
            runs.append((match[1], int(match[2] or 0), run))
    return max(runs)[2] if runs else None


def check_optimizer_state(saved, vectors: torch.Tensor) -> None:
    """Load `saved` into an AdamW over a stand-in for the vectors; its moments must have the vectors' shape."""
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros_like(vectors))])
    optimizer.load_state_dict(saved)
    for moments in optimizer.state.values():
        for key in ("exp_avg", "exp_avg_sq"):
            if moments[key].shape != vectors.shape:
                raise ValueError(f"{key} has shape {tuple(moments[key].shape)}, not {tuple(vectors.shape)}")


def check_rng_state(saved) -> None:
    """Set the saved states on fresh generators: what resuming will do to the global ones, minus the effect."""
    random.Random().setstate(python_rng_state(saved["python"]))
    np.random.RandomState().set_state(numpy_rng_state(saved["numpy"]))
    torch.Generator().set_state(saved["torch"])


def state_problem(state, step: int) -> str | None:
    """What is wrong with a loaded resume state (keys, types, shapes), or None. The optimizer and generator states
    are tried on throwaway objects, so a state that passes here also loads."""
    if not isinstance(state, dict):
        return f"it holds a {type(state).__name__}, not a training state"
    missing = [key for key in STATE_KEYS if key not in state]
    if missing:
        return f"it lacks {', '.join(missing)}"
    vectors, losses, scaler = state["vectors"], state["losses"], state.get("scaler")
    if not (isinstance(vectors, torch.Tensor) and vectors.ndim == 2 and vectors.is_floating_point()):
        return "vectors is not a (tokens, width) float tensor"
    if not (isinstance(state["name"], str) and isinstance(state["seed"], int) and state["step"] == step):
        return f"name, seed and step must be a string, an integer and {step} (the step in the file name)"
    if not (isinstance(losses, list) and len(losses) == step and all(isinstance(v, float) for v in losses)):
        return f"losses is not a list of {step} numbers"
    if scaler is not None and not (isinstance(scaler, dict)
                                   and all(isinstance(scaler.get(key), (int, float)) for key in SCALER_KEYS)):
        return "scaler is not a loss-scaler state"
    for key, check in (("optimizer", lambda: check_optimizer_state(state["optimizer"], vectors)),
                       ("rng", lambda: check_rng_state(state["rng"]))):
        try:
            check()
        except STATE_ERRORS as err:
            return f"{key} does not load ({type(err).__name__}: {err})"
    return None


def read_state(path: Path, step: int) -> dict:
    """A resume state, read through the safe reader and checked; a ConfigError naming the file otherwise."""
    state = load_checkpoint(path, "training state")
    problem = state_problem(state, step)
    if problem:
        raise ConfigError(f"{path}: not a usable training state: {problem}; resume from another checkpoint")
    return state


def newest_good_state(run_dir: Path, flag: str) -> ResumePoint:
    """The run's highest-step state that reads and checks out. A broken newer one (a full disk, a bad copy) is
    passed over with a warning: the checkpoint before it is still a good place to continue."""
    states = state_files(run_dir)
    if not states:
        raise ConfigError(f"{flag}: no checkpoints/state-step-N.pt in {run_dir}; start a new run instead")
    skipped = []
    for step, path in states:
        try:
            return ResumePoint(run_dir, path, read_state(path, step), skipped)
        except ConfigError as err:
            skipped.append(f"{err} (using the checkpoint before it)")
    raise ConfigError(f"{flag}: no usable state in {run_dir / 'checkpoints'}; the newest: {skipped[0]}")


def find_resume_point(resume: str, cfg: DictConfig) -> ResumePoint:
    """`latest` = this identity's newest run; a run folder = its newest good state; else a state file of a run.

    Only a genuine run folder is continued: a state file anywhere else would make the run write config.yaml,
    masks and checkpoints beside it, outside `output_dir`.
    """
    flag = f"--resume {resume}"
    if resume == "latest":
        run = newest_run(cfg.output_dir, cfg.name)
        if run is None:
            raise ConfigError(f"--resume latest: no checkpoint of {cfg.name!r} under {cfg.output_dir}; give a run "
                              "folder or start a new run")
        point = newest_good_state(run, flag)
    else:
        path = Path(resume)
        if not path.exists():
            raise ConfigError(f"{flag}: not found; give 'latest', a run folder or a state-step-N.pt file")
        match = STATE_NAME.fullmatch(path.name)
        state_file = path.is_file() and match is not None and path.parent.name == "checkpoints"
        run_dir = path.parent.parent if state_file else path
        if not ((state_file or path.is_dir()) and is_run_dir(run_dir)):
            raise ConfigError(f"{flag}: not a run folder of train.py (<run>/config.yaml and "
                              "<run>/checkpoints/state-step-N.pt); give 'latest', a run folder or such a file")
        point = ResumePoint(run_dir, path, read_state(path, int(match[1]))) if state_file else \
            newest_good_state(run_dir, flag)
    check_state_fits(point, cfg)
    return point


def check_state_fits(point: ResumePoint, cfg: DictConfig) -> None:
    """The state must be of this identity, with `num_tokens` vectors as wide as this base's text encoder."""
    name, vectors = point.state["name"], point.state["vectors"]
    if name != cfg.name or len(vectors) != cfg.num_tokens:
        raise ConfigError(f"--resume {point.path}: a checkpoint of {name!r} with {len(vectors)} tokens cannot "
                          f"continue {cfg.name!r} with num_tokens={cfg.num_tokens}")
    width = identity_width(cfg.model) or vectors.shape[1]
    if vectors.shape[1] != width:
        encoders = "two text encoders are" if cfg.model.family == "sdxl" else "text encoder is"
        raise ConfigError(f"--resume {point.path}: vectors of width {vectors.shape[1]} cannot continue on "
                          f"model.base, whose {encoders} {width} wide; resume with the base it was trained on")


def claim_run_dir(cfg: DictConfig, point: ResumePoint | None) -> tuple[Path, RunLock]:
    """The run folder, locked against a second trainer: a new one, or the resumed one with the temp files of its
    interrupted writes removed (only once the lock is held: until then they could be another trainer's)."""
    if point is None:
        run_dir = make_run_dir(cfg.output_dir, cfg.name)
        lock = RunLock(run_dir).acquire()
        (run_dir / "checkpoints").mkdir()
        return run_dir, lock
    lock = RunLock(point.run_dir).acquire()
    removed = remove_stale_temp_files(point.run_dir)
    if removed:
        log.info("removed %d temporary files an interrupted run left in %s", removed, point.run_dir)
    return point.run_dir, lock


def shared_run_dir(accelerator: Accelerator, cfg: DictConfig,
                   point: ResumePoint | None) -> tuple[Path, RunLock | None]:
    """The main process claims the run folder; every process learns it, or gets the same ConfigError (none is
    left waiting for a folder that will never come)."""
    lock, outcome = None, None
    if accelerator.is_main_process:
        try:
            run_dir, lock = claim_run_dir(cfg, point)
            outcome = ("ok", str(run_dir))
        except ConfigError as err:
            outcome = ("error", str(err))
    kind, text = broadcast_object_list([outcome])[0]
    if kind == "error":
        raise ConfigError(text)
    return Path(text), lock


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round tick values (steps of 1, 2 or 5 × 10^k) covering [low, high], for the loss-curve axes."""
    if high <= low:
        return [low]
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step - 1e-9) * step
    return [round(first + k * step, 12) for k in range(int((high - first) / step + 1e-9) + 1)]


def save_loss_curve(path: Path, losses: list[float]) -> None:
    """A small PNG of the loss (raw and smoothed) with labelled axes (x: step, y: loss); PIL only, no plotting
    library needed."""
    width, height, left, right, top, bottom = 640, 320, 64, 16, 24, 40
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    x0, x1, y0, y1 = left, width - right, height - bottom, top  # plot area: y0 is the bottom edge
    if len(losses) >= 2:
        values = np.asarray(losses)
        window = min(20, len(values))
        smooth = np.convolve(values, np.ones(window) / window, mode="valid")
        low, high = float(values.min()), float(values.max())
        span = (high - low) or 1.0
        steps = len(values)

        def x_of(step: float) -> int:  # step 1 .. steps, to the pixel
            return round(x0 + (step - 1) / (steps - 1) * (x1 - x0))

        def y_of(value: float) -> float:
            return y0 - (value - low) / span * (y0 - y1)

        for tick in nice_ticks(1, steps):
            draw.line([(x_of(tick), y0), (x_of(tick), y0 + 4)], fill="black")
            draw.text((x_of(tick) - 8, y0 + 6), f"{tick:g}", fill="black")
        for tick in nice_ticks(low, high) if high > low else [low]:
            draw.line([(x0 - 4, y_of(tick)), (x0, y_of(tick))], fill="black")
            draw.text((4, y_of(tick) - 5), f"{tick:.3g}", fill="black")
        draw.line([(x_of(i + 1), y_of(v)) for i, v in enumerate(values)], fill=(180, 180, 230), width=1)
        draw.line([(x_of(i + steps - len(smooth) + 1), y_of(v)) for i, v in enumerate(smooth)], fill=(20, 40, 160),
                  width=2)
        draw.text((x0 + 8, 4), f"{steps} steps, loss {low:.4f} .. {high:.4f} (light: raw, dark: mean of {window})",
                  fill="black")
    draw.line([(x0, y1), (x0, y0), (x1, y0)], fill="black", width=1)  # last: the curves start on the axes
    draw.text((x1 - 30, height - 14), "step", fill="black")
    draw.text((4, 4), "loss", fill="black")
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


class Validator:
    """Renders validation videos with the inference base + motion module and the current vectors. Each
    `validation.model` is loaded once per process and shared by every identity trained in it; each identity's
    tokens are added to it once."""

    def __init__(self):
        self.pipes: dict[str, object] = {}
        self.names: set[tuple[str, str]] = set()

    def __call__(self, cfg: DictConfig, name: str, class_word: str, vectors: torch.Tensor, out_dir: Path) -> None:
        from magicme.families import get_family
        from magicme.video_io import write_video

        key = OmegaConf.to_yaml(cfg.model)
        if key not in self.pipes:
            self.pipes[key] = get_family(cfg.model.family).load(cfg.model)
        pipe = self.pipes[key]
        pipe.prompts.weighting = cfg.prompt_weighting
        pairs = [(pipe.t2v.tokenizer, pipe.t2v.text_encoder)]
        if cfg.model.family == "sdxl":  # the joint vectors: the first encoder's columns, then the second's
            pairs.append((pipe.t2v.tokenizer_2, pipe.t2v.text_encoder_2))
        edges = [0]
        for _, encoder in pairs:
            edges.append(edges[-1] + encoder.get_input_embeddings().weight.shape[1])
        for (tokenizer, encoder), a, b in zip(pairs, edges, edges[1:]):
            own = vectors.detach()[:, a:b]
            if (key, name) not in self.names:
                pipe.t2v.load_textual_inversion(own.float().cpu(), token=f"<{name}>", tokenizer=tokenizer,
                                                text_encoder=encoder)
            ids = tokenizer.convert_tokens_to_ids(token_names(name, len(vectors)))
            with torch.no_grad():
                encoder.get_input_embeddings().weight[ids] = own.to(encoder.device, encoder.dtype)
        self.names.add((key, name))
        for i, template in enumerate(cfg.prompts):
            prompt = fill_identity(template, f"<{name}> {class_word}")
            for seed in cfg.seeds:
                video = pipe.text_to_video(
                    prompt, cfg.negative_prompt, torch.Generator().manual_seed(seed), gamma=cfg.gamma,
                    frames=cfg.frames, height=cfg.height, width=cfg.width, steps=cfg.steps,
                    guidance_scale=cfg.guidance_scale, progress=False,
                )
                write_video(out_dir / f"{i:04d}-{slug(prompt)}-{seed}", video, cfg.fps)


class SharedModels:
    """What every identity a process trains uses, loaded once: the frozen base (tokenizers, text encoders, VAE, UNet)
    and the validation pipelines. Each identity starts from the vocabularies as loaded (`Vocabulary.fresh`), so no
    identity's tokens reach another's training. SD-XL: two tokenizers and encoders, the `model.vae` in place of the
    base's, and the VAE in float32 under fp16 unless it says it is fp16-safe (`training.sdxl.vae_dtype`)."""

    def __init__(self, cfg: DictConfig, device: torch.device, dtype: torch.dtype):
        self.family = cfg.model.family
        if self.family == "sdxl":
            configs = cfg.model.base_config if Path(cfg.model.base).is_file() else cfg.model.base
            vae = load_vae(cfg.model.vae, configs, torch.float32) if cfg.model.vae else None
            base = load_sdxl_base(cfg.model.base, cfg.model.base_config, torch.float32, vae=vae)
            pairs = [(base.tokenizer, base.text_encoder), (base.tokenizer_2, base.text_encoder_2)]
            self.vae_dtype = vae_dtype(dtype, base.vae.config.force_upcast)
        else:
            base = load_base(cfg.model.base, cfg.model.base_config, torch.float32)
            pairs = [(base.tokenizer, base.text_encoder)]
            self.vae_dtype = dtype
        self.text_encoders = [encoder.requires_grad_(False) for _, encoder in pairs]
        self.vocabularies = [Vocabulary(tokenizer, encoder) for tokenizer, encoder in pairs]
        # SD-XL checkpoints split the joint vectors after the first encoder's width ({clip_l, clip_g}); SD1.5: None
        self.sdxl_width = base.text_encoder.config.hidden_size if self.family == "sdxl" else None
        self.vae = base.vae.requires_grad_(False).to(device, self.vae_dtype)
        self.unet = base.unet.requires_grad_(False).to(device, dtype)
        if cfg.compile:
            cache = use_compile_cache(models_folder(str(cfg.model.base)))
            blocks = compile_unet(self.unet, cfg.compile_backend)
            log.warning("compile: %d UNet blocks compile at the first step (minutes the first time, see "
                        "docs/speed.md); the compiled code is cached in %s", blocks, cache)
        self.validator = Validator()


def restore(state: dict, identity: IdentityEmbedding, optimizer, scaler) -> tuple[int, list[float]]:
    """Put back the vectors, the optimizer moments, the fp16 loss scale and the global generators; returns the
    step and the losses so far."""
    with torch.no_grad():
        identity.vectors.copy_(state["vectors"])
    optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and state.get("scaler") is not None:
        scaler.load_state_dict(state["scaler"])
    set_global_rng_state(state["rng"])
    return int(state["step"]), list(state["losses"])


def person_masks(accelerator: Accelerator, cfg: DictConfig, photos: list[Photo], together: bool) -> list[TrainImage]:
    """The photos with their CLIPSeg person masks, made before any run folder: "no person in any photo" is a
    ConfigError that leaves nothing behind. Processes training one identity `together`: the main process computes
    the masks, the others read its cache."""
    with accelerator.main_process_first() if together else contextlib.nullcontext():
        return load_training_images(
            photos, lambda: ClipSegSegmenter(cfg.model.clipseg, device=accelerator.device),
            model_identity(cfg.model.clipseg), cfg.mask_prompt, cfg.mask_threshold, Path(cfg.mask_cache_dir),
            working_size(cfg.resolution),
        )


@dataclass
class Trained:
    """One identity's training in this process: where, how far, how long."""

    run_dir: Path
    resumed_from: int  # the step it continued from (0: a new run)
    steps: int
    final_loss: float | None
    seconds: float
    models: SharedModels  # for the next identity


def train_identity(cfg: DictConfig, photos: list[Photo], point: ResumePoint | None, models: SharedModels | None,
                   together: bool, progress: bool, on_step: StepHook | None = None) -> Trained:
    """One identity, with the models of the identities before it (`models`; loaded here when None).

    `together`: all processes train this identity data-parallel (the main one writes); otherwise this process
    trains it alone (sharded identities: no collective call at all, since other processes train others)."""
    start = time.perf_counter()
    if point is not None:
        cfg.seed = int(point.state["seed"])  # a resumed run keeps drawing from its own streams
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, log_with=cfg.log_with, project_dir=cfg.output_dir)
    data = person_masks(accelerator, cfg, photos, together)
    run_dir, lock = shared_run_dir(accelerator, cfg, point) if together else claim_run_dir(cfg, point)
    main = accelerator.is_main_process or not together
    if not main:  # one process reports progress
        log.setLevel(logging.WARNING)
    file_log = logging.FileHandler(run_dir / "train.log") if main else logging.NullHandler()
    file_log.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(file_log)
    try:
        for message in point.skipped if point else []:
            log.warning(message)
        kept = {image.path for image in data}
        log.info("training %s on %d images (skipped, no %r found: %s), %d steps, in process %d of %d%s", cfg.name,
                 len(data), cfg.mask_prompt, ", ".join(p.path.name for p in photos if p.path not in kept) or "none",
                 cfg.max_steps, accelerator.process_index, accelerator.num_processes,
                 " (data-parallel)" if together else "")
        models = models or SharedModels(cfg, accelerator.device, DTYPES[cfg.mixed_precision])
        losses = run_training(accelerator, cfg, data, run_dir, point, progress, models, together, on_step)
    finally:
        log.removeHandler(file_log)
        file_log.close()
        if lock is not None:
            lock.release()
    return Trained(run_dir, int(point.state["step"]) if point else 0, len(losses),
                   losses[-1] if losses else None, time.perf_counter() - start, models)


def run_training(accelerator: Accelerator, cfg: DictConfig, data: list[TrainImage], run_dir: Path,
                 point: ResumePoint | None, progress: bool, models: SharedModels, together: bool,
                 on_step: StepHook | None = None) -> list[float]:
    """The loop, in a claimed run folder: steps, checkpoints, validation videos, the final files; returns the
    losses of every step. `on_step(step, losses, run_dir)` runs after each step's checkpoint and validation
    videos (a live view; `losses` are those read so far: every LOSS_READ_EVERY steps and at checkpoints); an
    exception it raises stops training there, the run resumable from its last checkpoint."""
    main = accelerator.is_main_process or not together
    accelerator.project_configuration = ProjectConfiguration(project_dir=str(run_dir))  # tracker logs go here
    # each process of a data-parallel run draws its own batches; an identity trained alone draws stream 0, so it
    # gets the same vectors whichever process (and after whichever identities) trains it
    stream = f"{cfg.seed}/{accelerator.process_index if together else 0}"
    set_seed(derive_seed(stream, "global") % 2**32)
    device = accelerator.device
    torch.backends.cudnn.benchmark = device.type == "cuda"  # every step has the same shapes: tune convolutions once
    allow_tf32(cfg.tf32)

    text_encoder, identity, encode, bake = attach_identity(models, cfg)
    tokens = " ".join(token_names(cfg.name, cfg.num_tokens)) + f" {cfg.class_word}"
    if cfg.gradient_checkpointing:  # the UNet's activations are what fills memory; the text encoder's are small
        models.unet.enable_gradient_checkpointing()
    else:
        models.unet.disable_gradient_checkpointing()
    optimizer = identity_optimizer(identity, cfg, device)
    if together:
        text_encoder, optimizer = accelerator.prepare(text_encoder, optimizer)
    else:  # no DistributedDataParallel: the other processes train other identities
        text_encoder, optimizer = text_encoder.to(device), accelerator.prepare(optimizer)
    sdxl = models.family == "sdxl"
    loss_fn = DiffusionLoss(models.vae, models.unet, DDPMScheduler(**(SDXL_TRAIN_BETAS if sdxl else SD15_BETAS)),
                            cfg.noise_offset, DTYPES[cfg.mixed_precision], models.vae_dtype,
                            sdxl_unet_inputs if sdxl else sd15_unet_inputs)
    step, losses = 0, []
    if point is not None:
        step, losses = restore(point.state, identity, optimizer, accelerator.scaler)
        log.info("resuming %s at step %d from %s", run_dir, step, point.path.name)

    checkpoints = run_dir / "checkpoints"
    if main:
        with atomic_path(run_dir / "config.yaml") as tmp:
            OmegaConf.save(cfg, tmp)
        save_overlays(run_dir / "masks", data)
    batches = TrainingBatches(data, cfg, tokens, stream, device)
    if cfg.log_with:
        accelerator.init_trackers("magicme", config=OmegaConf.to_container(cfg, resolve=True))
    bar = tqdm(total=cfg.max_steps, initial=step, desc=f"train {cfg.name}",
               disable=not (progress and accelerator.is_main_process))
    text_encoder.train()
    pending: list[torch.Tensor] = []  # losses still on the device: reading one waits for the GPU, so read in batches
    while step < cfg.max_steps:
        batch = batches(step)
        generator = torch.Generator().manual_seed(derive_seed(stream, "noise", step))
        pending.append(train_step(accelerator, loss_fn, text_encoder, identity, optimizer, batch,
                                  encode(batch.captions), generator, cfg.max_grad_norm, together))
        step += 1
        checkpoint = step % cfg.checkpoint_every == 0 or step == cfg.max_steps
        validation = cfg.validation.every and step % cfg.validation.every == 0
        if checkpoint or validation or step % LOSS_READ_EVERY == 0:
            new = read_losses(pending, step, checkpoints)  # before anything is written: a diverged run saves nothing
            pending.clear()
            for offset, value in enumerate(new):
                accelerator.log({"loss": value, "lr": cfg.lr}, step=step - len(new) + 1 + offset)
            losses.extend(new)
            bar.update(len(new))
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if main and checkpoint:
            save_checkpoint(checkpoints, cfg.name, cfg.seed, step, identity.vectors, optimizer, losses,
                            accelerator.scaler, cfg.class_word, models.sdxl_width)
            save_loss_curve(run_dir / "loss_curve.png", losses)
            log.info("step %d loss %.5f (mean of last %d: %.5f)", step, losses[-1], min(50, len(losses)),
                     float(np.mean(losses[-50:])))
        if main and validation:
            start = time.perf_counter()
            models.validator(cfg.validation, cfg.name, cfg.class_word, identity.vectors,
                             run_dir / "samples" / f"step-{step}")
            log.info("validation videos for step %d in %.1f s", step, time.perf_counter() - start)
        if main and on_step is not None:
            on_step(step, losses, run_dir)
    bar.close()
    bake(accelerator.unwrap_model(text_encoder))
    if main:
        finish(run_dir, cfg, step, losses)
    if together:
        accelerator.wait_for_everyone()  # no process leaves while another still writes the run's last files
        accelerator.end_training()
    else:
        for tracker in accelerator.trackers:  # the process group stays: this process may train more identities
            tracker.finish()
    return losses


def attach_identity(models: SharedModels, cfg: DictConfig) -> tuple[torch.nn.Module, torch.nn.Module, Callable,
                                                                     Callable]:
    """This identity's tokens in fresh copies of the vocabularies: (the text encoder module the loss calls, the
    identity (its `vectors` are what trains), captions → ids, bake(unwrapped text encoder module) writing the
    vectors into the vocabulary rows at the end)."""
    tokenizers = [vocabulary.fresh() for vocabulary in models.vocabularies]
    if models.family == "sdxl":
        identity = add_sdxl_identity_tokens(tokenizers, models.text_encoders, cfg.name, cfg.num_tokens, cfg.init)

        def bake(module):
            for encoder, part in zip((module.text_encoder, module.text_encoder_2), identity.parts):
                bake_identity(encoder, part)

        return (SDXLTextEncoders(*models.text_encoders), identity,
                sdxl_caption_ids([caption_ids(tokenizer) for tokenizer in tokenizers]), bake)
    (tokenizer,), (text_encoder,) = tokenizers, models.text_encoders
    identity = add_identity_tokens(tokenizer, text_encoder, cfg.name, cfg.num_tokens, cfg.init)
    return text_encoder, identity, caption_ids(tokenizer), lambda module: bake_identity(module, identity)


def identity_optimizer(identity: IdentityEmbedding, cfg: DictConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over the identity vectors alone; the fused kernel on CUDA (one launch instead of a dozen per step)."""
    return torch.optim.AdamW([identity.vectors], lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay,
                             eps=1e-8, fused=device.type == "cuda")


def train_step(accelerator: Accelerator, loss_fn: DiffusionLoss, text_encoder, identity: IdentityEmbedding, optimizer,
               batch, input_ids: torch.Tensor, generator: torch.Generator, max_grad_norm: float,
               together: bool) -> torch.Tensor:
    """One update of the identity vectors; returns the loss (of every process when `together`), left on the
    device: reading it would wait for the GPU."""
    loss = loss_fn(text_encoder, batch.pixels, batch.masks, input_ids, generator, accelerator.autocast,
                   batch.time_ids)
    value = (accelerator.gather(loss.detach()[None]) if together else loss.detach()[None]).float()
    accelerator.backward(loss)
    accelerator.clip_grad_norm_([identity.vectors], max_grad_norm)
    optimizer.step()
    optimizer.zero_grad()
    return value


def read_losses(pending: list[torch.Tensor], step: int, checkpoints: Path) -> list[float]:
    """The mean loss of each pending step (the last one is `step`), read from the device in one transfer; a NaN or
    infinite loss stops training before anything of those steps is saved."""
    values = torch.cat(pending).view(len(pending), -1).cpu()
    finite = torch.isfinite(values).all(dim=1)
    if not finite.all():
        first = int((~finite).nonzero()[0])
        raise TrainingDiverged(f"loss became {values[first].sum().item()} at step {step - len(pending) + 1 + first}; "
                               f"the last good checkpoint is kept in {checkpoints} (lower lr, or use "
                               "mixed_precision=no)")
    return values.mean(dim=1).tolist()


def final_file(cfg: DictConfig) -> str:
    """The learned identity's file name: `<name>.pt` (A1111 layout), for SD-XL `<name>.safetensors` ({clip_l,
    clip_g}, the A1111/ComfyUI SDXL embedding)."""
    return f"{cfg.name}.safetensors" if cfg.model.family == "sdxl" else f"{cfg.name}.pt"


def finish(run_dir: Path, cfg: DictConfig, step: int, losses: list[float]) -> None:
    """The identity's file (`final_file`) beside the run (and in `copy_to_embeddings_dir` when set), and a one-line
    summary."""
    final = run_dir / final_file(cfg)
    targets = [final] + ([Path(cfg.copy_to_embeddings_dir) / final.name] if cfg.copy_to_embeddings_dir else [])
    for target in targets:
        with atomic_path(target) as tmp:
            shutil.copyfile(run_dir / "checkpoints" / f"{cfg.name}-step-{step}{final.suffix}", tmp)
    with atomic_path(run_dir / "summary.json") as tmp:
        tmp.write_text(json.dumps({"name": cfg.name, "steps": step, "final": final.name,
                                   "final_loss": losses[-1] if losses else None}))


def save_checkpoint(folder: Path, name: str, seed: int, step: int, vectors: torch.Tensor, optimizer,
                    losses: list[float], scaler=None, class_word: str | None = None,
                    sdxl_width: int | None = None) -> None:
    """The embedding (A1111 `.pt` and safetensors, carrying the class word; SD-XL: the {clip_l, clip_g} safetensors,
    split after `sdxl_width` columns) and everything needed to resume, each written atomically.

    `scaler` is accelerate's fp16 GradScaler (None otherwise): its loss scale took many steps to settle.
    """
    vectors = vectors.detach().float().cpu()
    if sdxl_width is not None:
        save_sdxl_vectors(folder / f"{name}-step-{step}.safetensors", vectors, sdxl_width, class_word)
    else:
        save_embedding(folder / f"{name}-step-{step}.pt", vectors, name, class_word=class_word)
        save_embedding(folder / f"{name}-step-{step}.safetensors", vectors, name, class_word=class_word)
    state = {"name": name, "seed": seed, "step": step, "vectors": vectors, "optimizer": optimizer.state_dict(),
             "rng": global_rng_state(), "losses": losses,
             "scaler": scaler.state_dict() if scaler is not None else None}
    save_torch(state, folder / f"state-step-{step}.pt")
