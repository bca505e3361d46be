"""The training config (the original's `configs/ceo.yaml`, made explicit), checked before anything loads."""

import copy
import importlib.util
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from omegaconf import DictConfig, OmegaConf

from magicme.configfile import load_structured
from magicme.errors import ConfigError
from magicme.families import get_family
from magicme.inspector import inspect_base, inspect_files
from magicme.prompt_weights import weighting_problems
from magicme.prompts import ID_PLACEHOLDER
from magicme.images import IMAGE_SUFFIXES, image_files
from magicme.limits import MAX_SIZE, MAX_TRAIN_STEPS
from magicme.rundir import check_output_dir
from magicme.schema import MAX_SEED, VideoSettings, check_model, video_problems
from magicme.speed import compile_backend_problem
from magicme.training.data import Photo, read_photos

MIXED_PRECISION = ("no", "fp16", "bf16")
SD15_RESOLUTION = 512
CLIP_VOCAB = 49408


@dataclass
class AugmentConfig:
    flip_p: float = 0.5
    rotate_p: float = 0.3  # intended probability; the original code rotated with p = 1 - rotate_p (≈0.7)
    rotate_sigma: float = 10.0  # degrees (a standard deviation, as in the original)
    original_rotate_bug: bool = False  # true: rotate with p = 1 - rotate_p, exactly as the original ran
    zoom: bool = True  # zoom-out/zoom-in with caption prefixes


@dataclass
class TrainModelConfig:
    family: str = "sd15"  # sd15 (the paper) or sdxl: N vectors in each SD-XL text encoder (docs/sdxl.md)
    base: str = "models/stable-diffusion-v1-5"  # the ID tokens are trained on SD1.5 (the paper)
    base_config: Optional[str] = "models/stable-diffusion-v1-5"
    vae: Optional[str] = None  # sdxl only: a VAE in place of the base's (the fp16-fix VAE)
    clipseg: str = "models/clipseg"  # CIDAS/clipseg-rd64-refined layout


# The original's validation (Magic-Me configs/ceo.yaml): its two prompts, with `{id}` where the ID tokens and the
# class word were, its long negative prompt, and the 3D prior's γ its validation pipeline defaults to (cov_alpha).
ORIGINAL_VALIDATION_PROMPTS = [
    "photo of a {id} in casual clothes, natural skin, in front of the Pyramid, Egypt",
    "Photo of a {id} on a balcony with a cityscape at night, with soft lights twinkling in the distance",
]
ORIGINAL_VALIDATION_NEGATIVE = (
    "semi-realistic, cgi, 3d, render, sketch, cartoon, drawing, anime, text, close up, cropped, out of frame, worst "
    "quality, low quality, jpeg artifacts, ugly, duplicate, morbid, mutilated, extra fingers, mutated hands, poorly "
    "drawn hands, poorly drawn face, mutation, deformed, blurry, dehydrated, bad anatomy, bad proportions, extra "
    "limbs, cloned face, disfigured, gross proportions, malformed limbs, missing arms, missing legs, extra arms, extra "
    "legs, fused fingers, too many fingers, long neck")


@dataclass
class ValidationConfig(VideoSettings):
    """Validation videos: rendered like a sampling config, on an inference base + motion module (RV5.1 + mm v2),
    by default with the original's prompts, negative prompt and γ (docs/training.md)."""

    negative_prompt: str = ORIGINAL_VALIDATION_NEGATIVE
    gamma: float = 0.05
    every: int = 200  # steps between validation videos; 0 = never
    prompts: list[str] = field(default_factory=lambda: list(ORIGINAL_VALIDATION_PROMPTS))


@dataclass
class TrainConfig:
    name: str = "???"  # the identity's name: the embedding is <name>.pt, used as embedding:<name>
    images_dir: str = "???"  # 5-10 photos (jpg/png/webp, any size and aspect); `{name}` = each identity's name
    class_word: str = "man"
    identities: list[str] = field(default_factory=list)  # several identities in one config (instead of `name`)
    class_words: dict[str, str] = field(default_factory=dict)  # identity → class word, where not `class_word`
    num_tokens: int = 4
    init: str = "rare"  # "rare" (the original's rare-token ids) or a word whose embedding starts every token
    caption_template: str = "photo of a {id}"  # {id} becomes the ID tokens and the class word
    mask_prompt: str = "person"
    mask_threshold: float = 0.4
    use_orig_img_rate: float = 0.05  # probability of a full-image (unmasked) loss
    resolution: Optional[int] = None  # null: the family's (sd15 512; sdxl the base's native size, 1024)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    lr: float = 1e-3
    batch_size: int = 4
    max_steps: int = 400  # the original code; the paper says 200 (both checkpoints are written by default)
    checkpoint_every: int = 200
    noise_offset: float = 0.1
    max_grad_norm: float = 1.0
    weight_decay: float = 0.01
    seed: int = 42  # -1 draws a random seed, written to the run's config.yaml
    mixed_precision: str = "no"  # no | fp16 | bf16 (GPU)
    gradient_checkpointing: bool = False
    compile: bool = False  # regional torch.compile of the UNet's blocks (magicme/speed.py); minutes once, then cached
    compile_backend: str = "inductor"
    tf32: bool = True  # TF32 for what stays float32 under mixed precision (Ampere and newer GPUs; no-op elsewhere)
    model: TrainModelConfig = field(default_factory=TrainModelConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    output_dir: str = "outputs/train"
    mask_cache_dir: str = "outputs/mask_cache"
    sample_config: Optional[str] = None  # the sampling config the identity is for; null: the family's shipped one
    copy_to_embeddings_dir: Optional[str] = "auto"  # the final <name>.pt also goes here; auto: sample_config's
    # model.embeddings_dir (where sample.py looks); null: only in the run folder
    log_with: Optional[str] = None  # tensorboard | wandb (if installed)


AUTO = "auto"
FAMILY_SAMPLE_CONFIGS = {"sd15": "configs/sample/example.yaml", "sdxl": "configs/sample/sdxl.yaml"}
NAME_FIELD = "{name}"  # in images_dir: the identity's name (dataset/{name} is the default with `identities`)
SHARED_KEYS = ("model.family", "model.base", "model.base_config", "model.vae", "model.clipseg", "mixed_precision",
               "log_with", "compile", "compile_backend", "tf32")


def load_train_config(path: Path | str, overrides: list[str] | None = None) -> DictConfig:
    """The config file over the defaults, then `key=value` overrides; any malformed input is one ConfigError."""
    return load_structured(TrainConfig, path, overrides)


def expand_identities(cfg: DictConfig, where: str = "config") -> list[DictConfig]:
    """One config per identity: `identities: [ann, bob]` becomes an `ann` and a `bob` config (`images_dir` with
    `{name}` filled, default `dataset/{name}`; class word from `class_words`, else `class_word`); a config with
    `name` is itself. Each result is an ordinary single-identity config (what its run's config.yaml records)."""
    if not cfg.identities:
        _check(not cfg.class_words, f"{where}: class_words: only with identities: [...]; set class_word instead")
        return [cfg]
    _check(OmegaConf.is_missing(cfg, "name"),
           f"{where}: name and identities both set; give name (one identity) or identities (several)")
    names = list(cfg.identities)
    for repeated in sorted({n for n in names if names.count(n) > 1})[:1]:
        raise ConfigError(f"{where}: identities: {repeated!r} is listed twice; list each identity once")
    for unknown in sorted(set(cfg.class_words) - set(names))[:1]:
        raise ConfigError(f"{where}: class_words: {unknown!r} is not in identities; add it there or remove it")
    images = f"dataset/{NAME_FIELD}" if OmegaConf.is_missing(cfg, "images_dir") else cfg.images_dir
    _check(NAME_FIELD in images or len(names) == 1,
           f"{where}: images_dir: {images!r} has no {NAME_FIELD}; identities need one photo folder each, e.g. "
           f"images_dir: dataset/{NAME_FIELD}")
    expanded = []
    for name in names:
        one = copy.deepcopy(cfg)
        one.identities, one.class_words = [], {}
        one.name, one.images_dir = name, images.replace(NAME_FIELD, name)
        one.class_word = cfg.class_words.get(name, cfg.class_word)
        expanded.append(one)
    return expanded


def load_train_configs(paths: list[Path | str], overrides: list[str] | None = None) -> list[DictConfig]:
    """Every identity of every config file (`train.py --config a.yaml b.yaml`), overrides applied to each. Their
    names must differ, and the keys that decide the loaded models (`SHARED_KEYS`) must agree: the models are loaded
    once for all of them."""
    configs = [(str(path), one) for path in paths
               for one in expand_identities(load_train_config(path, overrides), str(path))]
    seen: dict[str, str] = {}
    for where, cfg in configs:
        if OmegaConf.is_missing(cfg, "name"):
            continue  # validate_train_config names the missing key
        _check(cfg.name not in seen,
               f"name: {cfg.name!r} is in both {seen.get(cfg.name)} and {where}; train each identity once")
        seen[cfg.name] = where
    first_where, first = configs[0]
    for where, cfg in configs[1:]:
        for key in SHARED_KEYS:
            a, b = OmegaConf.select(first, key), OmegaConf.select(cfg, key)
            _check(a == b, f"{key}: {a!r} in {first_where} but {b!r} in {where}; identities trained together "
                           f"share the loaded models, so train these separately")
    return [cfg for _, cfg in configs]


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def base_part_config(model: DictConfig, part: str = "text_encoder") -> dict:
    """The base's `<part>/config.json` (text encoder: vocabulary size, width), or {} for a Hub id not downloaded
    yet."""
    folder = model.base_config if Path(model.base).is_file() else model.base
    path = Path(str(folder), part, "config.json")
    return json.loads(path.read_text()) if path.is_file() else {}


def identity_width(model: DictConfig) -> int | None:
    """Width of the trained vectors: the text encoder's; SD-XL's two encoders' together (the joint vectors); None
    when a config is not on disk."""
    parts = ("text_encoder", "text_encoder_2") if model.family == "sdxl" else ("text_encoder",)
    widths = [base_part_config(model, part).get("hidden_size") for part in parts]
    return None if None in widths else sum(widths)


def check_family(cfg: DictConfig) -> None:
    """`model.family` and what depends on it, before anything loads; fills in the family's default resolution."""
    family = cfg.model.family
    _check(family in ("sd15", "sdxl"), f"model.family: {family!r} is not sd15 or sdxl")
    if cfg.validation.every > 0:
        _check(cfg.validation.model.family == family,
               f"validation.model.family: {cfg.validation.model.family} but model.family is {family}; validation "
               f"videos need a base of the family the tokens are trained for (set validation.model.family: {family})")
    if family == "sd15":
        _check(cfg.model.vae is None, "model.vae: only for model.family sdxl (the fp16-fix VAE); SD1.5 training uses "
                                      "the base's VAE, remove model.vae")
        if cfg.resolution is None:
            cfg.resolution = SD15_RESOLUTION
        return
    from magicme.training.sdxl import MIN_RESOLUTION_SHARE, default_resolution

    native = default_resolution(base_part_config(cfg.model, "unet"), base_part_config(cfg.model, "vae"))
    if cfg.resolution is None:
        cfg.resolution = native
    lowest = int(MIN_RESOLUTION_SHARE * native)
    _check(cfg.resolution >= lowest, f"resolution: {cfg.resolution} is below {lowest}, 3/4 of this SD-XL base's "
                                     f"native {native}; use {native} (the default) or at least {lowest}")


def check_caption_template(template: str) -> None:
    """One placeholder syntax everywhere: `{id}` (the old `{}` of str.format is refused, not silently kept)."""
    _check("{}" not in template,
           f"caption_template: {template!r} uses {{}}; write {ID_PLACEHOLDER} where the identity goes, "
           f"e.g. 'photo of a {ID_PLACEHOLDER}'")
    _check(ID_PLACEHOLDER in template, f"caption_template: {template!r} needs {ID_PLACEHOLDER} for the ID tokens")


def validate_train_config(cfg: DictConfig, rng: random.Random | None = None) -> list[Photo]:
    """Check every key, folder and photo; returns the decoded photos. A seed of -1 is drawn here and kept in `cfg`.

    Every photo is decoded here, so a broken one (or a decompression bomb) is an error before a run folder exists
    or a model loads; the decoded photos are handed to training rather than read again.
    """
    for key in ("name", "images_dir"):
        _check(not OmegaConf.is_missing(cfg, key), f"{key}: required; set it in the config or as {key}=...")
    _check(re.fullmatch(r"[a-z0-9_\-]+", cfg.name) is not None,
           f"name: {cfg.name!r} must be lower-case letters, digits, '_' or '-' (it becomes the file and token name)")
    images_dir = Path(cfg.images_dir)
    _check(images_dir.is_dir(), f"images_dir: {images_dir} is not a folder; put 5-10 photos in dataset/<name>/")
    images = image_files(images_dir)
    _check(len(images) > 0, f"images_dir: no images ({', '.join(IMAGE_SUFFIXES)}) in {images_dir}")
    _check(cfg.class_word.strip() != "", "class_word: required (e.g. man, woman, dog)")
    check_caption_template(cfg.caption_template)
    _check(1 <= cfg.num_tokens <= 16, f"num_tokens: {cfg.num_tokens} not in [1, 16]")
    _check(cfg.init == "rare" or cfg.init.strip() != "", "init: 'rare' or a word")
    for key in ("use_orig_img_rate", "mask_threshold", "augment.flip_p", "augment.rotate_p"):
        value = OmegaConf.select(cfg, key)
        _check(0.0 <= value <= 1.0, f"{key}: {value} not in [0, 1]")
    check_family(cfg)
    _check(64 <= cfg.resolution <= MAX_SIZE and cfg.resolution % 8 == 0,
           f"resolution: {cfg.resolution} must be a multiple of 8, at least 64 and at most {MAX_SIZE}")
    _check(cfg.lr > 0, f"lr: {cfg.lr} must be > 0")
    _check(cfg.batch_size >= 1, f"batch_size: {cfg.batch_size} must be >= 1")
    _check(1 <= cfg.max_steps <= MAX_TRAIN_STEPS, f"max_steps: {cfg.max_steps} must be >= 1 and <= {MAX_TRAIN_STEPS:,}")
    _check(cfg.checkpoint_every >= 1, f"checkpoint_every: {cfg.checkpoint_every} must be >= 1")
    for key in ("noise_offset", "weight_decay", "augment.rotate_sigma"):
        _check(OmegaConf.select(cfg, key) >= 0, f"{key}: {OmegaConf.select(cfg, key)} must be >= 0")
    _check(cfg.max_grad_norm > 0, f"max_grad_norm: {cfg.max_grad_norm} must be > 0")
    _check(-1 <= cfg.seed < MAX_SEED, f"seed: {cfg.seed} is not in [0, 2^32) or -1 (random)")
    _check(cfg.mixed_precision in MIXED_PRECISION, f"mixed_precision: {cfg.mixed_precision!r} not one of "
                                                   f"{', '.join(MIXED_PRECISION)}")
    _check(cfg.mixed_precision != "fp16" or torch.cuda.is_available(),
           "mixed_precision: fp16 needs a CUDA GPU; use no (or bf16) on a CPU")
    problem = cfg.compile and compile_backend_problem(cfg.compile_backend)
    _check(not problem, str(problem))
    _check(cfg.log_with in (None, "tensorboard", "wandb"), f"log_with: {cfg.log_with!r} not tensorboard or wandb")
    if cfg.log_with:
        _check(importlib.util.find_spec(cfg.log_with) is not None,
               f"log_with: {cfg.log_with} is not installed; pip install {cfg.log_with}, or set log_with: null")
    inspect_base({"family": cfg.model.family, "base": cfg.model.base, "base_config": cfg.model.base_config,
                  "vae": cfg.model.vae}).raise_first()
    if cfg.init == "rare":
        # unknown before loading a Hub model; the loader checks again
        vocab = base_part_config(cfg.model).get("vocab_size", CLIP_VOCAB)
        _check(vocab >= CLIP_VOCAB, f"init: the original's rare-token ids need the CLIP vocabulary ({CLIP_VOCAB} "
                                    f"tokens); this text encoder has {vocab}; set init to a word such as the class word")
    _check(Path(cfg.model.clipseg, "config.json").is_file(),
           f"model.clipseg: no CLIPSeg model in {cfg.model.clipseg}; run download_checkpoint.sh --only clipseg")
    inspect_files([("model.clipseg", cfg.model.clipseg, "CLIPSeg")]).raise_first()  # every weights file's header
    _check(cfg.validation.every >= 0, f"validation.every: {cfg.validation.every} must be >= 0 (0 = never)")
    if cfg.validation.every > 0:
        v = cfg.validation
        problems = video_problems(v, prefix="validation.", random_seeds=False)
        _check(not problems, problems[0] if problems else "")
        _check(len(v.prompts) > 0, "validation.prompts: give at least one prompt, or validation.every=0")
        for prompt in v.prompts:
            _check(ID_PLACEHOLDER in prompt,
                   f"validation.prompts: {prompt!r} needs {ID_PLACEHOLDER} where the identity goes")
            problems = weighting_problems(prompt, v.prompt_weighting)
            _check(not problems, f"validation.prompts: {problems[0] if problems else ''}")
        check_model(v.model, v.frames, prompts=[], prefix="validation.")  # the same file checks as sample.py's
        get_family(v.model.family).check(v.model)
    check_output_dir(cfg.output_dir, "output_dir")
    check_output_dir(cfg.mask_cache_dir, "mask_cache_dir")
    link_sampling(cfg)
    if cfg.copy_to_embeddings_dir:
        check_output_dir(cfg.copy_to_embeddings_dir, "copy_to_embeddings_dir")
    photos = read_photos(images)
    if cfg.seed == -1:
        cfg.seed = (rng or random.SystemRandom()).randrange(MAX_SEED)
    return photos


def link_sampling(cfg: DictConfig) -> None:
    """Fill in `sample_config` (the family's shipped config when null) and an `auto` `copy_to_embeddings_dir` (that
    config's `model.embeddings_dir`), so the trained identity lands where sample.py looks for it."""
    if cfg.sample_config is None:
        cfg.sample_config = FAMILY_SAMPLE_CONFIGS[cfg.model.family]
    if cfg.copy_to_embeddings_dir != AUTO:
        return
    _check(Path(cfg.sample_config).is_file(),
           f"sample_config: {cfg.sample_config} is not a file; run from the repository root, name your sampling "
           f"config (sample_config=...), or set copy_to_embeddings_dir to a folder (or null)")
    cfg.copy_to_embeddings_dir = sampling_embeddings_dir(cfg.sample_config)


def sampling_embeddings_dir(sample_config: str) -> str:
    """The `model.embeddings_dir` a sampling config reads (the schema's default where it sets none)."""
    from magicme.schema import load_sample_config

    folder = load_sample_config(sample_config).model.embeddings_dir
    return None if folder is None else str(folder)
