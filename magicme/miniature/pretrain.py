"""Pretraining the miniature text-to-video model on its world, as AnimateDiff's models were made: a VAE, then the
text encoder and UNet on images, then the motion module on clips with every image weight frozen; and the
classifier that measures what the model draws.

Each phase keeps a resumable state (`<out>/cache/<phase>.pt`: weights, optimizer, step) written atomically every
`SAVE_EVERY` steps; every batch is a pure function of (seed, phase, step), so a killed run continues where it
stopped. When all phases are done the models are written in the real formats (`write_bundle`): a diffusers SD
folder, the motion module in the original AnimateDiff `.ckpt` layout, and a stand-in CLIPSeg folder (random weights,
never run: the world's exact masks are put in train.py's mask cache instead, see `magicme.miniature.identity`).
"""

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from magicme.checkpoint_io import save_torch
from magicme.families.sd15 import SD15_BETAS
from magicme.miniature import models
from magicme.miniature.world import World, caption, draw_scene, image_batch, render_clip
from magicme.motion_module import motion_unet
from magicme.parity import apply_animatediff_numerics
from magicme.tiny.motion import save_original_motion_module
from magicme.tiny.sd import save_sd_folder, save_tiny_tokenizer
from magicme.training.data import derive_seed

log = logging.getLogger("magicme.miniature")
SAVE_EVERY = 100
MOTION_VERSION = "v3"


@dataclass(frozen=True)
class Budget:
    """Steps and batch sizes of each phase (`FULL` for the docs' figures, `CI` for the test's reduced world)."""

    vae_steps: int = 800
    vae_batch: int = 16
    image_steps: int = 1500
    image_batch: int = 48
    motion_steps: int = 150
    motion_batch: int = 4
    frames: int = 8
    classifier_steps: int = 300
    classifier_batch: int = 64
    seed: int = 0


FULL = Budget()
CI = Budget(vae_steps=250, vae_batch=8, image_steps=500, image_batch=24, motion_steps=0, classifier_steps=0)


def fingerprint(world: World, budget: Budget, steps: bool = True) -> str:
    """What decides the pretrained weights: a bundle built for another world or budget is not reused. Without
    `steps` it names the phases' cache: a budget with more steps continues the states of one with fewer."""
    kept = {k: v for k, v in asdict(budget).items() if steps or not k.endswith("_steps")}
    text = json.dumps({"world": asdict(world), "budget": kept, "version": 1}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) in [0, 1] → (N, 3, H, W) in [-1, 1] (the VAE's range)."""
    return torch.from_numpy(images).permute(0, 3, 1, 2) * 2 - 1


class Phase:
    """A resumable training phase: its modules' weights, one AdamW and the step, in `<cache>/<name>.pt`."""

    def __init__(self, name: str, cache: Path, modules: dict[str, torch.nn.Module], params, lr: float):
        self.name, self.path, self.modules = name, cache / f"{name}.pt", modules
        self.optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        self.step = 0
        if self.path.is_file():
            state = torch.load(self.path, weights_only=True)
            for key, module in modules.items():
                module.load_state_dict(state["modules"][key])
            self.optimizer.load_state_dict(state["optimizer"])
            self.step = int(state["step"])
            log.info("%s: resumed at step %d", name, self.step)

    def save(self) -> None:
        save_torch({"modules": {k: m.state_dict() for k, m in self.modules.items()},
                    "optimizer": self.optimizer.state_dict(), "step": self.step}, self.path)

    def run(self, steps: int, loss_at) -> None:
        """`loss_at(step)` → loss tensor; AdamW steps until `steps`, saving every SAVE_EVERY and at the end."""
        start = time.perf_counter()
        while self.step < steps:
            loss = loss_at(self.step)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]], 1.0)
            self.optimizer.step()
            self.optimizer.zero_grad()
            self.step += 1
            if self.step % SAVE_EVERY == 0 or self.step == steps:
                self.save()
                log.info("%s: step %d/%d loss %.4f (%.0f s)", self.name, self.step, steps, loss.item(),
                         time.perf_counter() - start)


def train_vae(world: World, budget: Budget, cache: Path) -> torch.nn.Module:
    """Reconstruction (MSE) with a light KL term; the scaling factor is then set so latents have unit variance."""
    vae = models.vae(world.size)
    phase = Phase("vae", cache, {"vae": vae}, vae.parameters(), 2e-3)

    def loss_at(step):
        images = to_tensor(image_batch(world, budget.vae_batch, derive_seed(budget.seed, "vae", step))[0])
        posterior = vae.encode(images).latent_dist
        recon = vae.decode(posterior.sample(torch.Generator().manual_seed(step))).sample
        return F.mse_loss(recon, images) + 1e-6 * posterior.kl().mean()

    phase.run(budget.vae_steps, loss_at)
    with torch.no_grad():
        images = to_tensor(image_batch(world, 256, derive_seed(budget.seed, "vae-scale"))[0])
        scale = 1.0 / vae.encode(images).latent_dist.mean.std().item()
    vae.register_to_config(scaling_factor=scale)
    return vae.requires_grad_(False).eval()


def encode(vae, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    with torch.no_grad():
        posterior = vae.encode(images).latent_dist
        return (posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)) \
            * vae.config.scaling_factor


def schedule() -> DDPMScheduler:
    """The training schedule of train.py (AnimateDiff's linear betas, 1000 steps, ε-prediction)."""
    return DDPMScheduler(**SD15_BETAS)


def denoising_loss(unet, scheduler, latents: torch.Tensor, hidden: torch.Tensor, generator: torch.Generator):
    noise = torch.randn(latents.shape, generator=generator)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator)
    pred = unet(scheduler.add_noise(latents, noise, t), t, encoder_hidden_states=hidden).sample
    return F.mse_loss(pred, noise)


def token_ids(tokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def train_image_model(world, budget, cache, tokenizer, vae):
    """Text encoder and UNet together on pictures; one caption in ten is empty (for classifier-free guidance)."""
    encoder, unet = models.text_encoder(tokenizer), models.unet(world.size // 8)
    params = list(encoder.parameters()) + list(unet.parameters())
    phase = Phase("image", cache, {"text_encoder": encoder, "unet": unet}, params, 1e-3)
    scheduler = schedule()

    def loss_at(step):
        seed = derive_seed(budget.seed, "image", step)
        images, _, _, captions = image_batch(world, budget.image_batch, seed)
        rng = np.random.default_rng(seed)
        captions = ["" if rng.random() < 0.1 else c for c in captions]
        generator = torch.Generator().manual_seed(seed)
        latents = encode(vae, to_tensor(images), generator)
        return denoising_loss(unet, scheduler, latents, encoder(token_ids(tokenizer, captions))[0], generator)

    phase.run(budget.image_steps, loss_at)
    return encoder.requires_grad_(False).eval(), unet.requires_grad_(False).eval()


def train_motion_module(world, budget, cache, tokenizer, vae, encoder, unet2d):
    """AnimateDiff's second stage: the motion module alone learns, on clips, inside the frozen image UNet, computed
    as sampling computes it (`animatediff_numerics: original`)."""
    adapter = models.motion_adapter()
    unet = motion_unet(unet2d, adapter)
    apply_animatediff_numerics(unet, MOTION_VERSION, "original")
    trained = [p for n, p in unet.named_parameters() if "motion_modules" in n]
    unet.requires_grad_(False)
    for p in trained:
        p.requires_grad_(True)
    modules = {f"down{i}": b.motion_modules for i, b in enumerate(unet.down_blocks)}
    modules.update({f"up{i}": b.motion_modules for i, b in enumerate(unet.up_blocks)})
    phase = Phase("motion", cache, modules, trained, 1e-3)
    scheduler = schedule()

    def loss_at(step):
        seed = derive_seed(budget.seed, "motion", step)
        rng = np.random.default_rng(seed)
        clips, captions = [], []
        for _ in range(budget.motion_batch):
            scene = draw_scene(world, rng)
            clips.append(render_clip(world, scene, budget.frames, rng)[0])
            captions.append("" if rng.random() < 0.1 else caption(scene, rng.random() < 0.85))
        generator = torch.Generator().manual_seed(seed)
        frames = encode(vae, to_tensor(np.concatenate(clips)), generator)  # (B·F, 4, h, w)
        b, f = budget.motion_batch, budget.frames
        latents = frames.reshape(b, f, *frames.shape[1:]).transpose(1, 2)  # (B, 4, F, h, w)
        with torch.no_grad():
            hidden = encoder(token_ids(tokenizer, captions))[0].repeat_interleave(f, dim=0)  # per frame, as diffusers
        return denoising_loss(unet, scheduler, latents, hidden, generator)

    phase.run(budget.motion_steps, loss_at)
    for i, block in enumerate(unet.down_blocks):
        adapter.down_blocks[i].motion_modules.load_state_dict(block.motion_modules.state_dict())
    for i, block in enumerate(unet.up_blocks):
        adapter.up_blocks[i].motion_modules.load_state_dict(block.motion_modules.state_dict())
    return adapter


def classifier_batch(world: World, vae, count: int, seed: int):
    """Pictures of every (shape, colour) pair, held-out ones included (it measures, it does not generate); half
    of them through the VAE and back, so it also reads pictures the model decodes."""
    pairs = [(s, c) for s in world.shapes for c in world.colours]
    images, _, scenes, _ = image_batch(world, count, seed, pairs=pairs)
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    with torch.no_grad():
        half = count // 2
        x[:half] = round_trip(vae, x[:half], seed)
    labels = torch.tensor([[world.shapes.index(s.shape), world.colours.index(s.colour),
                            world.backgrounds.index(s.background)] for s in scenes])
    return x, labels


def round_trip(vae, images: torch.Tensor, seed: int) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1] through the VAE's encoder (sampled latent) and decoder."""
    latents = encode(vae, images * 2 - 1, torch.Generator().manual_seed(seed))
    return ((vae.decode(latents / vae.config.scaling_factor).sample + 1) / 2).clamp(0, 1)


def train_classifier(world, budget, cache, vae) -> models.Classifier:
    classifier = models.Classifier(len(world.shapes), len(world.colours), len(world.backgrounds))
    phase = Phase("classifier", cache, {"classifier": classifier}, classifier.parameters(), 2e-3)

    def loss_at(step):
        x, labels = classifier_batch(world, vae, budget.classifier_batch, derive_seed(budget.seed, "cls", step))
        return sum(F.cross_entropy(logits, labels[:, k]) for k, logits in enumerate(classifier(x)))

    phase.run(budget.classifier_steps, loss_at)
    return classifier.eval()


def classifier_accuracy(world, vae, classifier, count: int, seed: int) -> dict[str, float]:
    """Accuracy per head on `count` fresh renders (seed unseen in training), clean and through the VAE."""
    pairs = [(s, c) for s in world.shapes for c in world.colours]
    images, _, scenes, _ = image_batch(world, count, seed, pairs=pairs)
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    labels = torch.tensor([[world.shapes.index(s.shape), world.colours.index(s.colour),
                            world.backgrounds.index(s.background)] for s in scenes])
    result = {}
    with torch.no_grad():
        for kind, pictures in (("clean", x), ("vae", round_trip(vae, x, seed))):
            for k, head in enumerate(("shape", "colour", "background")):
                result[f"{kind}_{head}"] = (classifier(pictures)[k].argmax(1) == labels[:, k]).float().mean().item()
    return result


def write_bundle(out: Path, world: World, budget: Budget, tokenizer, parts: dict, accuracy: dict,
                 seconds: float) -> None:
    """The models in the real formats, then `bundle.json` last: its presence says the bundle is complete."""
    from magicme.tiny.clipseg import save_tiny_clipseg

    save_sd_folder(out / "sd15", parts["text_encoder"], parts["unet"], parts["vae"])
    save_original_motion_module(parts["adapter"], out / "motion_module" / "mm_miniature.ckpt")
    save_tiny_clipseg(out / "clipseg", out / "sd15" / "tokenizer", seed=budget.seed)
    models.save_classifier(parts["classifier"], out / "classifier.safetensors")
    info = {"fingerprint": fingerprint(world, budget), "world": asdict(world), "budget": asdict(budget),
            "classifier_accuracy": accuracy, "pretraining_seconds": seconds}
    (out / "bundle.json").write_text(json.dumps(info, indent=2))


def read_bundle(out: Path, world: World, budget: Budget) -> dict | None:
    path = out / "bundle.json"
    if not path.is_file():
        return None
    info = json.loads(path.read_text())
    return info if info.get("fingerprint") == fingerprint(world, budget) else None


def pretrain(out: Path | str, world: World = World(), budget: Budget = FULL) -> dict:
    """Build (or reuse) the miniature bundle in `out`; returns its `bundle.json` information."""
    out = Path(out)
    cached = read_bundle(out, world, budget)
    if cached:
        log.info("reusing the pretrained miniature models in %s", out)
        return cached
    cache = out / "cache" / fingerprint(world, budget, steps=False)
    cache.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    torch.manual_seed(budget.seed)  # the initial weights
    tokenizer = save_tiny_tokenizer(out / "sd15" / "tokenizer", world.vocabulary())
    vae = train_vae(world, budget, cache)
    encoder, unet = train_image_model(world, budget, cache, tokenizer, vae)
    adapter = train_motion_module(world, budget, cache, tokenizer, vae, encoder, unet)
    classifier = train_classifier(world, budget, cache, vae)
    accuracy = classifier_accuracy(world, vae, classifier, 512, derive_seed(budget.seed, "cls-test"))
    seconds = time.perf_counter() - start
    parts = {"text_encoder": encoder, "unet": unet, "vae": vae, "adapter": adapter, "classifier": classifier}
    write_bundle(out, world, budget, tokenizer, parts, accuracy, seconds)
    return read_bundle(out, world, budget)
