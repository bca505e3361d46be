"""The paper's ablations in miniature, measured: identity learning (learned tokens vs the class word vs random
tokens), the masked loss (which background the samples show), and the 3D noise prior's γ (frame consistency and
identity per γ).

The identity's photos all show it on one background (`Plan.photo_background`), so the masked-loss comparison uses
the same photos for both trainings. Every sample has its own seed (`Plan.seed + i`) and a background cycled from the
world's; the same seeds are used in every condition of an experiment.
"""

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from magicme.miniature.identity import (
    identity_renders, random_tokens, seed_mask_cache, train_tokens, write_photos,
)
from magicme.miniature.measure import consistency, read_video
from magicme.miniature.models import load_classifier
from magicme.miniature.world import World

TRAIN_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "miniature" / "train.yaml"
NAME = "mini"


@dataclass(frozen=True)
class Plan:
    """Sample counts and settings of the experiments (`FULL_PLAN` for docs/miniature.md, `CI_PLAN` for the test)."""

    samples: int = 50  # per condition, identity experiment
    mask_samples: int = 24  # per loss, masked-loss experiment (and half as many without a background)
    gamma_samples: int = 16  # per γ
    gammas: tuple[float, ...] = (0.0, 0.1, 0.2, 0.5)
    steps: int = 10
    guidance_scale: float = 5.0
    frames: int = 2  # identity experiments (the γ sweep uses `gamma_frames`)
    gamma_frames: int = 8
    gamma: float = 0.1  # the paper's default, for the identity experiments
    train_steps: int = 300
    photos: int = 8
    photo_background: str = "sand"
    seed: int = 1000
    denoise_pictures: int = 48  # fresh renders for the denoising-error experiment
    denoise_draws: int = 16  # (timestep, noise) draws per picture
    experiments: tuple[str, ...] = ("denoising", "identity", "mask", "gamma")


FULL_PLAN = Plan()
CI_PLAN = Plan(gamma_samples=8, gammas=(0.0, 0.5), steps=10, gamma_frames=6, train_steps=150,
               denoise_pictures=16, experiments=("denoising", "gamma"))


@dataclass
class Results:
    plan: dict
    tables: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)
    examples: dict = field(default_factory=dict)  # condition → a few videos, for the grid image


def train_identities(out: Path, world: World, plan: Plan, runs: Path) -> dict[str, Path]:
    """The identity's photos and exact masks, then its tokens with the masked loss and with the whole-photo loss."""
    shape, colour = world.held_out[0]
    folder = out / "identities" / NAME
    photos = write_photos(world, folder, shape, colour, plan.photo_background, plan.photos, plan.seed)
    seed_mask_cache(photos, out / "mask_cache", out / "clipseg", "object", 0.5)
    common = [f"images_dir={folder}", f"class_word={shape}", f"init={shape}", f"max_steps={plan.train_steps}",
              f"checkpoint_every={plan.train_steps}", f"model.base={out / 'sd15'}", f"model.clipseg={out / 'clipseg'}",
              f"mask_cache_dir={out / 'mask_cache'}", f"output_dir={runs}",
              f"copy_to_embeddings_dir={out / 'embeddings'}", f"seed={plan.seed}"]
    return {"masked": train_tokens(TRAIN_CONFIG, common + [f"name={NAME}"]),
            "unmasked": train_tokens(TRAIN_CONFIG, common + [f"name={NAME}_unmasked", "use_orig_img_rate=1.0"])}


def load_pipeline(out: Path, embeddings: dict[str, Path]):
    """The sampling pipeline exactly as sample.py builds it from configs/miniature/sample.yaml's model block."""
    from magicme.families.sd15 import load
    from magicme.schema import model_config

    cfg = model_config({"base": str(out / "sd15"), "base_config": None, "vae": None,
                        "motion_module": str(out / "motion_module" / "mm_miniature.ckpt"), "motion_loras": [],
                        "embeddings_dir": str(out / "embeddings"), "scheduler": "ddim",
                        "animatediff_numerics": "original"})
    return load(cfg, embeddings, device="cpu", precision="fp32")


def render(pipe, prompt: str, seed: int, plan: Plan, gamma: float, frames: int) -> np.ndarray:
    return pipe.text_to_video(prompt, "", torch.Generator().manual_seed(seed), gamma=gamma, frames=frames,
                              height=64, width=64, steps=plan.steps, guidance_scale=plan.guidance_scale,
                              progress=False)


def rate(values) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def identity_experiment(pipe, classifier, world: World, plan: Plan, results: Results) -> None:
    """Identity hit rate (the classifier reads the held-out shape AND colour) for learned / class word / random."""
    shape, colour = world.held_out[0]
    conditions = {"learned tokens": f"<{NAME}> {shape}", "class word only": shape,
                  "random tokens": f"<{NAME}_random> {shape}"}
    rows = {}
    for label, subject in conditions.items():
        hits, shapes, colours, videos = [], [], [], []
        for i in range(plan.samples):
            background = world.backgrounds[i % len(world.backgrounds)]
            video = render(pipe, f"a photo of a {subject} on {background}", plan.seed + i, plan, plan.gamma,
                           plan.frames)
            reading = read_video(classifier, world, video)
            shapes.append(reading.shape == shape)
            colours.append(reading.colour == colour)
            hits.append(shapes[-1] and colours[-1])
            videos.append(video)
        rows[label] = {"identity_hit": rate(hits), "shape_hit": rate(shapes), "colour_hit": rate(colours),
                       "n": plan.samples}
        results.examples[f"identity/{label}"] = videos[:8]
    results.tables["identity"] = rows


def mask_experiment(pipe, classifier, world: World, plan: Plan, results: Results) -> None:
    """Which background appears: prompts naming another background than the photos' (match rate, leak rate), and
    prompts naming none (how often the photos' background comes back; chance is one in len(backgrounds))."""
    shape, colour = world.held_out[0]
    others = [b for b in world.backgrounds if b != plan.photo_background]
    rows = {}
    for label, name in (("masked loss", NAME), ("whole-photo loss", f"{NAME}_unmasked")):
        match, leak, free_leak, hits = [], [], [], []
        for i in range(plan.mask_samples):
            background = others[i % len(others)]
            video = render(pipe, f"a photo of a <{name}> {shape} on {background}", plan.seed + i, plan, plan.gamma,
                           plan.frames)
            reading = read_video(classifier, world, video)
            match.append(reading.background == background)
            leak.append(reading.background == plan.photo_background)
            hits.append(reading.shape == shape and reading.colour == colour)
            if i < 8:
                results.examples.setdefault(f"mask/{label}", []).append(video)
        for i in range(plan.mask_samples // 2):
            video = render(pipe, f"a photo of a <{name}> {shape}", plan.seed + 10_000 + i, plan, plan.gamma,
                           plan.frames)
            free_leak.append(read_video(classifier, world, video).background == plan.photo_background)
        rows[label] = {"prompt_background": rate(match), "photo_background": rate(leak),
                       "photo_background_unprompted": rate(free_leak), "identity_hit": rate(hits),
                       "n": plan.mask_samples, "n_unprompted": plan.mask_samples // 2}
    results.tables["mask"] = rows


def gamma_experiment(pipe, classifier, world: World, plan: Plan, results: Results) -> None:
    """Frame consistency and identity hit rate per γ at the same seeds and prompts."""
    shape, colour = world.held_out[0]
    rows = {}
    for gamma in plan.gammas:
        metrics, hits = [], []
        for i in range(plan.gamma_samples):
            background = world.backgrounds[i % len(world.backgrounds)]
            video = render(pipe, f"a photo of a <{NAME}> {shape} on {background}", plan.seed + i, plan, gamma,
                           plan.gamma_frames)
            metrics.append(consistency(video))
            reading = read_video(classifier, world, video)
            hits.append(reading.shape == shape and reading.colour == colour)
            if i < 2:
                results.examples.setdefault(f"gamma/{gamma}", []).append(video)
        rows[gamma] = {key: float(np.nanmean([m[key] for m in metrics])) for key in metrics[0]}
        rows[gamma].update(identity_hit=rate(hits), n=plan.gamma_samples)
    results.tables["gamma"] = rows


def denoising_errors(pipe, world: World, prompts: list[str], images: np.ndarray, masks: np.ndarray,
                     seed: int, draws: int = 4) -> dict[str, float]:
    """ε-prediction error of the sampling UNet (one-frame clips) on `images` captioned by `prompts`, inside and
    outside each object's mask at latent resolution, over `draws` fixed (timestep, noise) pairs per picture: the
    training objective itself, on pictures the tokens were not trained on."""
    from diffusers import DDPMScheduler

    from magicme.families.sd15 import SD15_BETAS
    from magicme.training.loss import latent_mask

    t2v = pipe.t2v
    scheduler = DDPMScheduler(**SD15_BETAS)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        ids = t2v.tokenizer([t2v.maybe_convert_prompt(p, t2v.tokenizer) for p in prompts], padding="max_length",
                            max_length=t2v.tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
        hidden = t2v.text_encoder(ids)[0]
        pixels = torch.from_numpy(images).permute(0, 3, 1, 2) * 2 - 1
        latents = t2v.vae.encode(pixels).latent_dist.mean * t2v.vae.config.scaling_factor
        inside = latent_mask(torch.from_numpy(masks), latents.shape[-2:])
        errors = {"object": [], "background": []}
        for _ in range(draws):
            noise = torch.randn(latents.shape, generator=generator)
            t = torch.randint(50, 950, (len(images),), generator=generator)
            noisy = scheduler.add_noise(latents, noise, t)
            pred = t2v.unet(noisy[:, :, None], t, encoder_hidden_states=hidden).sample[:, :, 0]
            squared = (pred - noise) ** 2
            for key, region in (("object", inside), ("background", 1 - inside)):
                errors[key].append((squared * region).sum((1, 2, 3)) / (region.sum((1, 2, 3)) * 4).clamp(min=1))
    return {key: float(torch.cat(values).mean()) for key, values in errors.items()}


def denoising_experiment(pipe, classifier, world: World, plan: Plan, results: Results) -> None:
    """The training objective, per prompt subject, on two sets of pictures: the identity's own photos (on the
    photos' background, captioned as in training, without a background) — lower object error = the tokens learned
    the object, lower background error = they absorbed the background — and fresh renders on the *other*
    backgrounds, captioned with theirs (does what was learned carry over to unseen pictures?)."""
    shape, colour = world.held_out[0]
    others = [b for b in world.backgrounds if b != plan.photo_background]
    sets = {"photos": (identity_renders(world, shape, colour, [plan.photo_background], plan.photos, plan.seed),
                       None),
            "unseen": (identity_renders(world, shape, colour, others, plan.denoise_pictures, plan.seed + 20_000),
                       others)}
    subjects = {"learned tokens (masked loss)": f"<{NAME}> {shape}",
                "learned tokens (whole-photo loss)": f"<{NAME}_unmasked> {shape}",
                "class word only": shape, "random tokens": f"<{NAME}_random> {shape}"}
    rows = {}
    for label, subject in subjects.items():
        rows[label] = {}
        for name, (renders, backgrounds) in sets.items():
            images, masks = np.stack([r[0] for r in renders]), np.stack([r[1] for r in renders])
            prompts = [f"a photo of a {subject}" + (f" on {backgrounds[i % len(backgrounds)]}" if backgrounds else "")
                       for i in range(len(renders))]
            errors = denoising_errors(pipe, world, prompts, images, masks, plan.seed, plan.denoise_draws)
            rows[label].update({f"{name}_{key}": value for key, value in errors.items()})
            rows[label][f"{name}_n"] = len(renders)
    results.tables["denoising"] = rows


EXPERIMENTS = {"identity": identity_experiment, "mask": mask_experiment, "gamma": gamma_experiment,
               "denoising": denoising_experiment}


def run(out: Path, world: World, plan: Plan, runs: Path, after_each=None) -> Results:
    """Train the identity's tokens (masked and whole-photo loss), make the random-token control, then each
    experiment of the plan; the seconds of each part are recorded. `after_each(results)` (e.g. writing the
    report) follows every experiment, so a long run leaves what it finished."""
    from safetensors.torch import load_file

    from magicme.embeddings import load_embedding_file

    results = Results(plan=asdict(plan))
    start = time.perf_counter()
    tokens = train_identities(out, world, plan, runs)
    results.seconds["id_training"] = time.perf_counter() - start
    learned = load_embedding_file(tokens["masked"])
    table = load_file(str(out / "sd15" / "text_encoder" / "model.safetensors"))
    reference = next(v for k, v in table.items() if k.endswith("token_embedding.weight"))
    embeddings = {NAME: tokens["masked"], f"{NAME}_unmasked": tokens["unmasked"],
                  f"{NAME}_random": random_tokens(out / "embeddings" / f"{NAME}_random.pt", f"{NAME}_random",
                                                  reference, len(learned), plan.seed)}
    pipe = load_pipeline(out, embeddings)
    classifier = load_classifier(out / "classifier.safetensors", len(world.shapes), len(world.colours),
                                 len(world.backgrounds))
    for name in plan.experiments:
        start = time.perf_counter()
        EXPERIMENTS[name](pipe, classifier, world, plan, results)
        results.seconds[name] = time.perf_counter() - start
        if after_each is not None:
            after_each(results)
    return results
