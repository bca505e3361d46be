"""The ID-token training loop: one explicit accelerate loop, in the spirit of diffusers' textual_inversion example.

Only the N identity vectors learn (`magicme.training.tokens.IdentityEmbedding`); text encoder, UNet and VAE are
frozen, so the vocabulary stays bit-identical and gradient clipping acts on the identity (the original clipped the
UNet, which had no gradient). Every random draw of step k comes from generators seeded by (seed, k)
(`magicme.training.data`), so a resumed run continues exactly where it stopped.
"""

import contextlib
import json
import logging
import random
import shutil
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, broadcast_object_list, set_seed
from diffusers import DDPMScheduler
from omegaconf import DictConfig, OmegaConf
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from magicme.checkpoint_io import save_torch
from magicme.embeddings import save_embedding
from magicme.errors import ConfigError
from magicme.models import SD15_BETAS, load_base
from magicme.segmentation import ClipSegSegmenter, model_identity
from magicme.training.data import TrainingBatches, caption_ids, derive_seed, load_training_images, working_size
from magicme.training.loss import latent_mask, masked_mse
from magicme.training.tokens import add_identity_tokens, bake_identity, token_names
from magicme.video_io import atomic_path

log = logging.getLogger("magicme.train")
DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class TrainingDiverged(Exception):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class DiffusionLoss:
    """The frozen half of a training step: VAE encoding, SD1.5's training noise schedule, the UNet and the masked
    ε-loss. Only `text_encoder` (holding the identity vectors) carries gradients."""

    vae: torch.nn.Module
    unet: torch.nn.Module
    scheduler: DDPMScheduler
    noise_offset: float
    dtype: torch.dtype

    def __call__(self, text_encoder, pixels: torch.Tensor, masks: torch.Tensor, input_ids: torch.Tensor,
                 generator: torch.Generator, autocast=contextlib.nullcontext) -> torch.Tensor:
        device = pixels.device
        with torch.no_grad():
            posterior = self.vae.encode(pixels.to(self.dtype)).latent_dist
            eps = torch.randn(posterior.mean.shape, generator=generator).to(device, self.dtype)
            latents = (posterior.mean + posterior.std * eps) * self.vae.config.scaling_factor
        b, c = latents.shape[:2]
        noise = torch.randn(latents.shape, generator=generator)
        # the original's noise offset: one extra random value per (sample, channel), shared by all pixels
        noise = (noise + self.noise_offset * torch.randn((b, c, 1, 1), generator=generator)).to(device, self.dtype)
        timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (b,), generator=generator).to(device)
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        with autocast():
            hidden = text_encoder(input_ids.to(device))[0]
            pred = self.unet(noisy, timesteps, hidden.to(self.dtype)).sample
        return masked_mse(pred, noise, latent_mask(masks, latents.shape[-2:]))


def global_rng_state() -> dict:
    """Library code may draw from the global generators (e.g. dropout); their states go into checkpoints too."""
    name, keys, position, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [name, keys.tolist(), position, has_gauss, gauss],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_global_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def make_run_dir(output_dir: str, name: str) -> Path:
    run_dir = Path(output_dir) / f"{name}-{datetime.now():%Y%m%d-%H%M%S}"
    n = 1
    while run_dir.exists():
        run_dir = run_dir.with_name(f"{name}-{datetime.now():%Y%m%d-%H%M%S}-{n}")
        n += 1
    (run_dir / "checkpoints").mkdir(parents=True)
    return run_dir


def find_resume_state(resume: str, output_dir: str, name: str) -> Path:
    """`latest` = the newest state file of this identity's runs; a run folder = its newest; else the file itself."""
    if resume == "latest":
        states = sorted(Path(output_dir).glob(f"{name}-*/checkpoints/state-step-*.pt"),
                        key=lambda p: p.stat().st_mtime)
        if not states:
            raise ConfigError(f"--resume latest: no checkpoint of {name!r} under {output_dir}")
        return states[-1]
    path = Path(resume)
    if path.is_dir():
        states = sorted(path.glob("checkpoints/state-step-*.pt"), key=lambda p: int(p.stem.rsplit("-", 1)[1]))
        if not states:
            raise ConfigError(f"--resume {path}: no checkpoints/state-step-*.pt in this folder")
        return states[-1]
    if not path.is_file():
        raise ConfigError(f"--resume {path}: not found; give 'latest', a run folder or a state-step-N.pt file")
    return path


def save_loss_curve(path: Path, losses: list[float]) -> None:
    """A small PNG of the loss (raw and smoothed); PIL only, no plotting library needed."""
    width, height, pad = 640, 320, 30
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    if len(losses) >= 2:
        values = np.asarray(losses)
        smooth = np.convolve(values, np.ones(min(20, len(values))) / min(20, len(values)), mode="valid")
        low, high = float(values.min()), float(values.max()) or 1.0
        span = (high - low) or 1.0

        def points(series, offset=0):
            n = len(values) - 1
            return [(pad + (i + offset) / n * (width - 2 * pad), height - pad - (v - low) / span * (height - 2 * pad))
                    for i, v in enumerate(series)]

        draw.line(points(values), fill=(180, 180, 230), width=1)
        draw.line(points(smooth, offset=len(values) - len(smooth)), fill=(20, 40, 160), width=2)
        draw.text((pad, 5), f"loss: {low:.4f} .. {high:.4f} over {len(values)} steps", fill="black")
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


class Validator:
    """Renders validation videos with the inference base + motion module, loaded once, with the current vectors."""

    def __init__(self, cfg: DictConfig, name: str, class_word: str):
        self.cfg, self.name, self.class_word = cfg, name, class_word
        self.pipe = None

    def __call__(self, vectors: torch.Tensor, out_dir: Path) -> None:
        from magicme.models import load_pipeline
        from magicme.sampling import slug
        from magicme.video_io import write_video

        if self.pipe is None:
            self.pipe = load_pipeline(self.cfg.model)
            self.pipe.t2v.load_textual_inversion(vectors.detach().float().cpu(), token=f"<{self.name}>")
        tokenizer, encoder = self.pipe.t2v.tokenizer, self.pipe.t2v.text_encoder
        ids = tokenizer.convert_tokens_to_ids(token_names(self.name, len(vectors)))
        with torch.no_grad():
            encoder.get_input_embeddings().weight[ids] = vectors.detach().to(encoder.device, encoder.dtype)
        for i, template in enumerate(self.cfg.prompts):
            prompt = template.replace("{id}", f"<{self.name}> {self.class_word}")
            for seed in self.cfg.seeds:
                video = self.pipe.text_to_video(
                    prompt, self.cfg.negative_prompt, torch.Generator().manual_seed(seed), gamma=self.cfg.gamma,
                    frames=self.cfg.frames, height=self.cfg.height, width=self.cfg.width, steps=self.cfg.steps,
                    guidance_scale=self.cfg.guidance_scale, progress=False,
                )
                write_video(out_dir / f"{i:04d}-{slug(prompt)}-{seed}", video, self.cfg.fps)


def train(cfg: DictConfig, images: list[Path], resume: str | None = None, progress: bool = True) -> Path:
    """Train the ID tokens; returns the run folder holding `<name>.pt`."""
    state_path = find_resume_state(resume, cfg.output_dir, cfg.name) if resume else None
    state = torch.load(state_path, map_location="cpu", weights_only=True) if state_path else None
    if state is not None and (state["name"] != cfg.name or len(state["vectors"]) != cfg.num_tokens):
        raise ConfigError(f"--resume {state_path}: a checkpoint of {state['name']!r} with {len(state['vectors'])} "
                          f"tokens cannot continue {cfg.name!r} with num_tokens={cfg.num_tokens}")
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, log_with=cfg.log_with, project_dir=cfg.output_dir)
    main = accelerator.is_main_process
    if state_path is not None:
        run_dir = state_path.parent.parent
        cfg.seed = int(state["seed"])  # a resumed run keeps drawing from its own streams
    else:  # one run folder, made by the main process, for every process
        holder = [str(make_run_dir(cfg.output_dir, cfg.name)) if main else None]
        run_dir = Path(broadcast_object_list(holder)[0])
    accelerator.project_configuration = ProjectConfiguration(project_dir=str(run_dir))  # tracker logs go here
    stream = f"{cfg.seed}/{accelerator.process_index}"  # each process draws its own batches
    set_seed(derive_seed(stream, "global") % 2**32)
    device, weight_dtype = accelerator.device, DTYPES[cfg.mixed_precision]
    torch.backends.cudnn.benchmark = device.type == "cuda"  # every step has the same shapes: tune convolutions once

    base = load_base(cfg.model.base, cfg.model.base_config, torch.float32)
    tokenizer, text_encoder = base.tokenizer, base.text_encoder
    text_encoder.requires_grad_(False)
    identity = add_identity_tokens(tokenizer, text_encoder, cfg.name, cfg.num_tokens, cfg.init)
    tokens = " ".join(token_names(cfg.name, cfg.num_tokens)) + f" {cfg.class_word}"
    if cfg.gradient_checkpointing:  # the UNet's activations are what fills memory; the text encoder's are small
        base.unet.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW([identity.vectors], lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay,
                                  eps=1e-8)
    text_encoder, optimizer = accelerator.prepare(text_encoder, optimizer)
    loss_fn = DiffusionLoss(base.vae.requires_grad_(False).to(device, weight_dtype),
                            base.unet.requires_grad_(False).to(device, weight_dtype),
                            DDPMScheduler(**SD15_BETAS), cfg.noise_offset, weight_dtype)
    step, losses = 0, []
    if state is not None:
        with torch.no_grad():
            identity.vectors.copy_(state["vectors"])
        optimizer.load_state_dict(state["optimizer"])
        set_global_rng_state(state["rng"])
        step, losses = int(state["step"]), list(state["losses"])
        log.info("resuming %s at step %d", run_dir, step)

    checkpoints = run_dir / "checkpoints"
    if not main:  # one process reports progress
        log.setLevel(logging.WARNING)
    file_log = logging.FileHandler(run_dir / "train.log") if main else logging.NullHandler()
    file_log.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(file_log)
    try:
        if main:
            with atomic_path(run_dir / "config.yaml") as tmp:
                OmegaConf.save(cfg, tmp)
        with accelerator.main_process_first():  # the main process computes the masks, the others read the cache
            data = load_training_images(
                images, lambda: ClipSegSegmenter(cfg.model.clipseg, device=device), model_identity(cfg.model.clipseg),
                cfg.mask_prompt, cfg.mask_threshold, Path(cfg.mask_cache_dir), working_size(cfg.resolution),
                overlay_dir=run_dir / "masks" if main else None,
            )
        batches = TrainingBatches(data, cfg, tokens, stream, device)
        encode = caption_ids(tokenizer)
        log.info("training %s on %d images (%d skipped), %d steps", cfg.name, len(data), len(images) - len(data),
                 cfg.max_steps)
        if cfg.log_with:
            accelerator.init_trackers("magicme", config=OmegaConf.to_container(cfg, resolve=True))
        validator = Validator(cfg.validation, cfg.name, cfg.class_word)
        bar = tqdm(total=cfg.max_steps, initial=step, desc=f"train {cfg.name}", disable=not (progress and main))
        text_encoder.train()
        while step < cfg.max_steps:
            batch = batches(step)
            generator = torch.Generator().manual_seed(derive_seed(stream, "noise", step))
            loss = loss_fn(text_encoder, batch.pixels, batch.masks, encode(batch.captions), generator,
                           accelerator.autocast)
            value = accelerator.gather(loss.detach()[None]).float()
            if not torch.isfinite(value).all():
                raise TrainingDiverged(f"loss became {value.sum().item()} at step {step + 1}; the last good "
                                       f"checkpoint is kept in {checkpoints} (lower lr, or use mixed_precision=no)")
            accelerator.backward(loss)
            accelerator.clip_grad_norm_([identity.vectors], cfg.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            losses.append(value.mean().item())
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            accelerator.log({"loss": losses[-1], "lr": cfg.lr}, step=step)
            if main and (step % cfg.checkpoint_every == 0 or step == cfg.max_steps):
                save_checkpoint(checkpoints, cfg.name, cfg.seed, step, identity.vectors, optimizer, losses)
                save_loss_curve(run_dir / "loss_curve.png", losses)
                log.info("step %d loss %.5f (mean of last %d: %.5f)", step, losses[-1], min(50, len(losses)),
                         float(np.mean(losses[-50:])))
            if main and cfg.validation.every and step % cfg.validation.every == 0:
                start = time.perf_counter()
                validator(identity.vectors, run_dir / "samples" / f"step-{step}")
                log.info("validation videos for step %d in %.1f s", step, time.perf_counter() - start)
        bar.close()
        bake_identity(accelerator.unwrap_model(text_encoder), identity)
        if main:
            finish(run_dir, cfg, step, losses)
        accelerator.end_training()
    finally:
        log.removeHandler(file_log)
        file_log.close()
    return run_dir


def finish(run_dir: Path, cfg: DictConfig, step: int, losses: list[float]) -> None:
    """`<name>.pt` beside the run (and in `copy_to_embeddings_dir` when set), and a one-line summary."""
    final = run_dir / f"{cfg.name}.pt"
    targets = [final] + ([Path(cfg.copy_to_embeddings_dir) / final.name] if cfg.copy_to_embeddings_dir else [])
    for target in targets:
        with atomic_path(target) as tmp:
            shutil.copyfile(run_dir / "checkpoints" / f"{cfg.name}-step-{step}.pt", tmp)
    with atomic_path(run_dir / "summary.json") as tmp:
        tmp.write_text(json.dumps({"name": cfg.name, "steps": step, "final": final.name,
                                   "final_loss": losses[-1] if losses else None}))


def save_checkpoint(folder: Path, name: str, seed: int, step: int, vectors: torch.Tensor, optimizer,
                    losses: list[float]) -> None:
    """The embedding (A1111 `.pt` and safetensors) and everything needed to resume, each written atomically."""
    vectors = vectors.detach().float().cpu()
    save_embedding(folder / f"{name}-step-{step}.pt", vectors, name)
    save_embedding(folder / f"{name}-step-{step}.safetensors", vectors, name)
    state = {"name": name, "seed": seed, "step": step, "vectors": vectors, "optimizer": optimizer.state_dict(),
             "rng": global_rng_state(), "losses": losses}
    save_torch(state, folder / f"state-step-{step}.pt")
