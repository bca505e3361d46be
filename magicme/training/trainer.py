"""The ID-token training loop: one explicit accelerate loop, in the spirit of diffusers' textual_inversion example.

Only the N new rows of the token-embedding matrix learn. Every other row is restored after each optimizer step, so
it stays bit-identical; gradients of other rows are zeroed before clipping, so clipping acts on the ID tokens (the
original clipped the UNet, which had no gradient). All randomness comes from three generators (augmentation, batch
order, noise) whose states go into every checkpoint, so a resumed run continues exactly where it stopped.
"""

import json
import logging
import random
import shutil
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from diffusers import DDPMScheduler
from omegaconf import DictConfig, OmegaConf
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from magicme.embeddings import save_embedding
from magicme.errors import ConfigError
from magicme.models import SD15_BETAS, load_base
from magicme.segmentation import ClipSegSegmenter
from magicme.training.config import RARE_TOKEN_IDS
from magicme.training.data import BatchSampler, load_training_images, make_example
from magicme.training.loss import latent_mask, masked_mse
from magicme.video_io import atomic_path

log = logging.getLogger("magicme.train")
DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class TrainingDiverged(Exception):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def token_names(name: str, count: int) -> list[str]:
    """`<ann>`, `<ann>_1`, …: the names diffusers expands `<ann>` into when the embedding is loaded for sampling."""
    return [f"<{name}>"] + [f"<{name}>_{i}" for i in range(1, count)]


def add_identity_tokens(tokenizer, text_encoder, name: str, count: int, init: str) -> list[int]:
    """Add the ID tokens and initialise their rows: from the original's rare tokens, or from a word's embedding."""
    vocab_size = len(tokenizer)
    tokens = token_names(name, count)
    if tokenizer.add_tokens(tokens) != count:
        raise ConfigError(f"name: tokens {tokens[0]}… already exist in the tokenizer; choose another name")
    ids = tokenizer.convert_tokens_to_ids(tokens)
    text_encoder.resize_token_embeddings(len(tokenizer))
    weight = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        if init == "rare":
            sources = [RARE_TOKEN_IDS[i % len(RARE_TOKEN_IDS)] for i in range(count)]
            if max(sources) >= vocab_size:
                raise ConfigError(f"init: the original's rare-token ids need the CLIP vocabulary (49408 tokens); this "
                                  f"tokenizer has {vocab_size}; set init to a word such as the class word")
            weight[ids] = weight[sources]
        else:
            word_ids = tokenizer(init, add_special_tokens=False).input_ids
            if not word_ids:
                raise ConfigError(f"init: {init!r} gives no tokens")
            weight[ids] = weight[word_ids].mean(dim=0)
    return ids


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
        states = sorted(Path(output_dir).glob(f"{name}-*/checkpoints/state-step-*.pt"), key=lambda p: p.stat().st_mtime)
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
    state = torch.load(find_resume_state(resume, cfg.output_dir, cfg.name), weights_only=True) if resume else None
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, log_with=cfg.log_with)
    device, weight_dtype = accelerator.device, DTYPES[cfg.mixed_precision]

    base = load_base(cfg.model.base, cfg.model.base_config, torch.float32)
    tokenizer, text_encoder, vae, unet = base.tokenizer, base.text_encoder, base.vae, base.unet
    ids = add_identity_tokens(tokenizer, text_encoder, cfg.name, cfg.num_tokens, cfg.init)
    tokens = " ".join(token_names(cfg.name, cfg.num_tokens)) + f" {cfg.class_word}"
    for module in (vae, unet, text_encoder):
        module.requires_grad_(False)
    embedding = text_encoder.get_input_embeddings()
    embedding.weight.requires_grad_(True)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        text_encoder.gradient_checkpointing_enable()
    frozen = embedding.weight.detach().clone()
    others = torch.ones(len(frozen), dtype=torch.bool)
    others[ids] = False

    optimizer = torch.optim.AdamW([embedding.weight], lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay,
                                  eps=1e-8)
    text_encoder, optimizer = accelerator.prepare(text_encoder, optimizer)
    vae.to(device, weight_dtype)
    unet.to(device, weight_dtype)
    frozen, others = frozen.to(device), others.to(device)
    scheduler = DDPMScheduler(**SD15_BETAS)

    seed = cfg.seed + accelerator.process_index
    aug_rng = random.Random(seed)
    noise_gen = torch.Generator().manual_seed(seed)
    step, losses = 0, []
    if state is not None:
        run_dir = Path(state["run_dir"])
        with torch.no_grad():
            embedding.weight[ids] = state["vectors"].to(device)
        optimizer.load_state_dict(state["optimizer"])
        aug_rng.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["aug_rng"]))
        noise_gen.set_state(state["noise_gen"])
        step, losses = int(state["step"]), list(state["losses"])
        log.info("resuming %s at step %d", run_dir, step)
    else:
        run_dir = make_run_dir(cfg.output_dir, cfg.name)
    checkpoints = run_dir / "checkpoints"
    file_log = logging.FileHandler(run_dir / "train.log")
    file_log.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(file_log)
    try:
        if accelerator.is_main_process:
            with atomic_path(run_dir / "config.yaml") as tmp:
                OmegaConf.save(cfg, tmp)
        data = load_training_images(
            images, lambda: ClipSegSegmenter(cfg.model.clipseg, device=device), cfg.mask_prompt, cfg.mask_threshold,
            Path(cfg.mask_cache_dir), overlay_dir=run_dir / "masks",
        )
        sampler = BatchSampler(len(data), seed)
        if state is not None:
            sampler.load_state_dict(state["sampler"])
        log.info("training %s on %d images (%d skipped), %d steps", cfg.name, len(data), len(images) - len(data),
                 cfg.max_steps)
        if cfg.log_with:
            accelerator.init_trackers("magicme", config=OmegaConf.to_container(cfg, resolve=True))
        validator = Validator(cfg.validation, cfg.name, cfg.class_word)
        bar = tqdm(total=cfg.max_steps, initial=step, desc=f"train {cfg.name}", disable=not progress)
        text_encoder.train()
        while step < cfg.max_steps:
            examples = [make_example(data[i], aug_rng, cfg, tokens) for i in sampler.next(cfg.batch_size)]
            pixels = torch.from_numpy(np.stack([e.pixels for e in examples])).permute(0, 3, 1, 2) * 2.0 - 1.0
            masks = torch.from_numpy(np.stack([e.mask for e in examples]))
            input_ids = tokenizer([e.caption for e in examples], padding="max_length", truncation=True,
                                  max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
            with torch.no_grad():
                posterior = vae.encode(pixels.to(device, weight_dtype)).latent_dist
                latents = (posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=noise_gen)
                           .to(device, weight_dtype)) * vae.config.scaling_factor
            b, c = latents.shape[:2]
            noise = torch.randn(latents.shape, generator=noise_gen)
            noise = (noise + cfg.noise_offset * torch.randn((b, c, 1, 1), generator=noise_gen)).to(device, weight_dtype)
            timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=noise_gen).to(device)
            noisy = scheduler.add_noise(latents, noise, timesteps)
            with accelerator.autocast():
                hidden = text_encoder(input_ids.to(device))[0]
                pred = unet(noisy, timesteps, hidden.to(weight_dtype)).sample
            loss = masked_mse(pred, noise, latent_mask(masks.to(device), latents.shape[-2:]))
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"loss became {loss.item()} at step {step + 1}; the last good checkpoint is "
                                       f"kept in {checkpoints} (lower lr, or use mixed_precision=no)")
            accelerator.backward(loss)
            weight = accelerator.unwrap_model(text_encoder).get_input_embeddings().weight
            weight.grad[others] = 0
            accelerator.clip_grad_norm_([weight], cfg.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad()
            with torch.no_grad():
                weight[others] = frozen[others]
            step += 1
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            accelerator.log({"loss": losses[-1], "lr": cfg.lr}, step=step)
            if step % cfg.checkpoint_every == 0 or step == cfg.max_steps:
                vectors = weight[ids].detach().float().cpu()
                if accelerator.is_main_process:
                    save_checkpoint(checkpoints, cfg.name, step, vectors, optimizer, aug_rng, sampler, noise_gen,
                                    losses, run_dir)
                    save_loss_curve(run_dir / "loss_curve.png", losses)
                log.info("step %d loss %.5f (mean of last %d: %.5f)", step, losses[-1], min(50, len(losses)),
                         float(np.mean(losses[-50:])))
            if cfg.validation.every and step % cfg.validation.every == 0 and accelerator.is_main_process:
                start = time.perf_counter()
                validator(weight[ids], run_dir / "samples" / f"step-{step}")
                log.info("validation videos for step %d in %.1f s", step, time.perf_counter() - start)
        bar.close()
        if accelerator.is_main_process:
            final = run_dir / f"{cfg.name}.pt"
            shutil.copyfile(checkpoints / f"{cfg.name}-step-{step}.pt", final)
            if cfg.copy_to_embeddings_dir:
                Path(cfg.copy_to_embeddings_dir).mkdir(parents=True, exist_ok=True)
                with atomic_path(Path(cfg.copy_to_embeddings_dir) / final.name) as tmp:
                    shutil.copyfile(final, tmp)
            (run_dir / "summary.json").write_text(json.dumps({"name": cfg.name, "steps": step, "final": final.name,
                                                              "final_loss": losses[-1] if losses else None}))
        accelerator.end_training()
    finally:
        log.removeHandler(file_log)
        file_log.close()
    return run_dir


def save_checkpoint(folder: Path, name: str, step: int, vectors: torch.Tensor, optimizer, aug_rng: random.Random,
                    sampler: BatchSampler, noise_gen: torch.Generator, losses: list[float], run_dir: Path) -> None:
    """The embedding (A1111 `.pt` and safetensors) and everything needed to resume, each written atomically."""
    save_embedding(folder / f"{name}-step-{step}.pt", vectors, name)
    save_embedding(folder / f"{name}-step-{step}.safetensors", vectors, name)
    state = {"step": step, "vectors": vectors, "optimizer": optimizer.state_dict(), "aug_rng": aug_rng.getstate(),
             "sampler": sampler.state_dict(), "noise_gen": noise_gen.get_state(), "losses": losses,
             "run_dir": str(run_dir)}
    with atomic_path(folder / f"state-step-{step}.pt") as tmp:
        torch.save(state, tmp)
