"""The sampling config: its schema, loading with `key=value` overrides, and every check before a model loads.

A config is a YAML file (configs/sample/example.yaml lists every key) merged over the defaults below; overrides
(OmegaConf dot-list, e.g. `steps=4 model.scheduler.name=euler`) come last. Each stage plug-in adds its own block
(`face:`, `tiled:`) from its `Config` dataclass (magicme/stages/). This module imports neither torch nor
diffusers, so a typo is reported in a fraction of a second.

`check_sample_config` then checks, in order of cost: every value and range, the stages' settings, the output folder,
the prompts' identity references; the device; every model file from its headers (magicme/inspector.py: the
`model:` block's and every other model the run loads, `model_files`) and the identities' vectors; what needs the
family's libraries (the scheduler); last, the prompts' token counts from the base's tokenizer files
(magicme/prompt_length.py). The first problem raises one `ConfigError` naming the key or file. Relative paths are
relative to the directory you run from.
"""

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from magicme.configfile import load_structured
from magicme.control.settings import control_entries, control_problems
from magicme.control.sparse import motion_problem, sparse_problems, sparse_settings
from magicme.errors import ConfigError
from magicme.grid import fill_prompt, placeholder_problem, resolve_identities
from magicme.limits import MAX_FPS, MAX_FRAMES, MAX_SIZE, MAX_STEPS
from magicme.prompt_weights import WEIGHTINGS, weighting_problems
from magicme.prompts import Prompt, keyframes, malformed_references, referenced_names
from magicme.rundir import check_output_dir
from magicme.families import FAMILIES, get_family
from magicme.stages import STAGES, Sample, installed
from magicme.steps import SchedulerConfig, schedule_length

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
NUMERICS = ("original", "diffusers")
FORMATS = ("mp4", "gif")
SDPA_BACKEND_NAMES = ("auto", "flash", "efficient", "cudnn", "math")  # magicme/speed.py maps them to kernels
MAX_SEED = 2**32
PROMPT_KEYS = ("prompt", "negative_prompt", "seeds", "gamma", "tokens")  # tokens: written to config.yaml, not read


@dataclass
class LoraConfig:
    """A LoRA file and the strength it is merged at (`model.motion_loras`, `model.loras`)."""

    path: str = "???"
    strength: float = 1.0


@dataclass
class ModelConfig:
    family: str = "sd15"  # model family (magicme/families/)
    base: str = "models/stable-diffusion-v1-5"  # diffusers folder, single .safetensors/.ckpt file, or Hub id
    base_config: Optional[str] = "models/stable-diffusion-v1-5"  # configs + tokenizer for a single-file base
    vae: Optional[str] = None  # separate VAE: folder or single file (needed for "noVAE" checkpoints)
    motion_module: str = "models/motion_module/mm_sd_v15_v2.ckpt"
    motion_loras: list[LoraConfig] = field(default_factory=list)  # original AnimateDiff MotionLoRAs
    loras: list[LoraConfig] = field(default_factory=list)  # SD1.5 image LoRAs (e.g. AnimateLCM's), fused by diffusers
    embeddings_dir: Optional[str] = "models/embeddings"
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)  # `scheduler: euler` is short for {name: euler}
    animatediff_numerics: str = "original"  # "original": as AnimateDiff computed; "diffusers": stock diffusers


@dataclass
class VideoSettings:
    """How each video is rendered: shared by sampling configs and by training's validation videos."""

    model: ModelConfig = field(default_factory=ModelConfig)
    negative_prompt: str = ""
    seeds: list[int] = field(default_factory=lambda: [42])  # -1 draws a random seed, saved in config.yaml
    steps: int = 25
    guidance_scale: float = 7.5
    frames: int = 16
    width: int = 512
    height: int = 512
    fps: int = 8
    gamma: float = 0.1  # 3D noise prior correlation between neighbouring frames (paper: 0.1)
    prompt_weighting: str = "comfy"  # comfy | a1111 | none: how `(text:1.3)` weights are read (docs/prompts.md)


@dataclass
class ContextConfig:
    """Context windows: the motion module sees `length` frames at a time, windows overlapping by `overlap` frames,
    their noise predictions fused at every step (magicme/context.py) — videos longer than the motion module."""

    length: int = 16
    overlap: int = 4
    closed_loop: bool = False  # windows wrap around the end: a looping clip


@dataclass
class FreeUConfig:
    """FreeU on every sampler's UNet (magicme/freeu.py); the defaults are the Magic-Me ComfyUI graph's FreeU_V2."""

    version: int = 2  # 2 = ComfyUI's FreeU_V2 (structure-aware backbone factor), 1 = FreeU / diffusers' constant b
    b1: float = 1.1  # backbone factor where the decoder has 4x the base channels (SD1.5: 1280)
    b2: float = 1.2  # ... 2x the base channels (640)
    s1: float = 0.9  # low-frequency scale of the skip features there
    s2: float = 0.4


@dataclass
class SampleConfig(VideoSettings):
    prompts: list[Any] = field(default_factory=list)  # strings, or {prompt, negative_prompt, seeds, gamma}
    identities: Any = None  # null, [names] or all: every prompt's {id} filled per identity (magicme/grid.py)
    class_words: dict[str, str] = field(default_factory=dict)  # {identity: class word} over the files' own
    stages: list[str] = field(default_factory=lambda: ["t2v"])  # a first stage (t2v/edit), then refinements
    input_video: Optional[str] = None  # re-render this video (MP4/GIF/frame folder): the edit stage replaces t2v
    input_strength: float = 0.6  # how much of the input video is re-noised and denoised with the ID prompt
    # ControlNets guiding the first stage: [{model, video | type + from, scale, start, end}] (magicme/control/)
    control: list[Any] = field(default_factory=list)
    # SparseCtrl keyframes guiding the first stage: {model, frames: {0: a.png, 15: b.png}, type: rgb | scribble,
    # scale, start, end}; null = none (magicme/control/sparse.py)
    sparse_control: Any = None
    context: Optional[ContextConfig] = None  # null = the whole video at once (frames ≤ the motion module's length)
    freeu: Optional[FreeUConfig] = None  # null = off; {} = the graph's FreeU_V2 (b1 1.1, b2 1.2, s1 0.9, s2 0.4)
    precision: str = "auto"  # auto = fp16 on GPU, fp32 on CPU
    device: str = "auto"  # auto = cuda, then mps, then cpu
    attention: str = "sdpa"  # or xformers
    sdpa_backend: str = "auto"  # auto = the fastest measured on this device; flash, efficient, cudnn or math
    compile: bool = False  # regional torch.compile of the UNet (magicme/speed.py): minutes once, then cached
    compile_backend: str = "inductor"  # torch.compile backend; eager / aot_eager trace only (graph-break checks)
    fp8: bool = False  # the UNet's linear layers as float8 matmuls (torchao; CUDA 8.9+, precision bf16)
    vae_slicing: bool = False
    cpu_offload: bool = False
    formats: list[str] = field(default_factory=lambda: list(FORMATS))
    save_frames: bool = False
    output_dir: str = "outputs"


def sample_schema() -> DictConfig:
    """SampleConfig plus one block per registered stage that has settings (`face:`, `tiled:`, …)."""
    schema = OmegaConf.structured(SampleConfig)
    OmegaConf.set_struct(schema, False)
    for name, stage in STAGES.items():
        if stage.Config is not None:
            schema[name] = OmegaConf.structured(stage.Config)
    OmegaConf.set_struct(schema, True)
    OmegaConf.set_struct(schema.model.scheduler.kwargs, False)  # free-form: any setting of the scheduler class
    OmegaConf.set_struct(schema.class_words, False)  # keyed by identity names
    return schema


def normalise_shorthands(layer: DictConfig) -> None:
    """`scheduler: euler` (the short form, and what older configs say) → `{name: euler}`, in `model:` and in every
    stage block (`face.scheduler`, `tiled.scheduler`)."""
    for block in layer.values():
        if isinstance(block, DictConfig) and isinstance(block.get("scheduler"), str):
            block.scheduler = {"name": block.scheduler}


def open_stage_schedulers(cfg: DictConfig) -> None:
    """A stage's own `scheduler:` block is free-form once set (any diffusers scheduler's settings); its shape is
    checked with the stage (magicme/steps.py `scheduler_block_problems`)."""
    for block in cfg.values():
        if isinstance(block, DictConfig) and isinstance(block.get("scheduler"), DictConfig) and block is not cfg.model:
            OmegaConf.set_struct(block.scheduler, False)


def load_sample_config(path: Path | str | None, overrides: list[str] | None = None) -> DictConfig:
    """Defaults ← YAML file ← `key=value` overrides, type-checked against the schema; a clip in `input_video`
    makes the first stage `edit` (re-render the clip) instead of `t2v`."""
    cfg = load_structured(sample_schema(), path, overrides, normalise=normalise_shorthands,
                          relax=open_stage_schedulers)
    if cfg.input_video is not None and list(cfg.stages[:1]) == ["t2v"]:
        cfg.stages[0] = "edit"
    return cfg


def model_config(model: dict | DictConfig) -> DictConfig:
    """A `model:` block with the schema's defaults and types, as the loaders expect it (tests, scripts)."""
    layer = OmegaConf.create({"model": model})
    normalise_shorthands(layer)
    return OmegaConf.merge(OmegaConf.structured(ModelConfig), layer.model)


def _first(problems: list[str]) -> None:
    if problems:
        raise ConfigError(problems[0])


def video_problems(v: DictConfig, prefix: str = "", random_seeds: bool = True) -> list[str]:
    """Range checks of the settings in VideoSettings (sampling configs and training's `validation:` block)."""
    lowest_seed = -1 if random_seeds else 0
    checks = [
        (v.model.family in FAMILIES, f"{prefix}model.family: {v.model.family!r} is not one of {', '.join(FAMILIES)}"),
        (1 <= v.steps <= MAX_STEPS, f"{prefix}steps: {v.steps} must be at least 1 and at most {MAX_STEPS}"),
        (v.guidance_scale >= 0, f"{prefix}guidance_scale: {v.guidance_scale} must be >= 0"),
        (1 <= v.frames <= MAX_FRAMES, f"{prefix}frames: {v.frames} must be at least 1 and at most {MAX_FRAMES}"),
        (8 <= v.width <= MAX_SIZE and v.width % 8 == 0,
         f"{prefix}width: {v.width} must be a positive multiple of 8, at most {MAX_SIZE}"),
        (8 <= v.height <= MAX_SIZE and v.height % 8 == 0,
         f"{prefix}height: {v.height} must be a positive multiple of 8, at most {MAX_SIZE}"),
        (1 <= v.fps <= MAX_FPS, f"{prefix}fps: {v.fps} must be at least 1 and at most {MAX_FPS}"),
        (0.0 <= v.gamma < 1.0, f"{prefix}gamma: {v.gamma} not in [0, 1)"),
        (len(v.seeds) > 0 and all(lowest_seed <= s < MAX_SEED for s in v.seeds),
         f"{prefix}seeds: {list(v.seeds)} must be one or more integers in [0, 2^32)"
         + (" or -1 (random)" if random_seeds else "")),
        (v.prompt_weighting in WEIGHTINGS,
         f"{prefix}prompt_weighting: {v.prompt_weighting!r} is not one of {', '.join(WEIGHTINGS)}"),
        (v.model.animatediff_numerics in NUMERICS,
         f"{prefix}model.animatediff_numerics: {v.model.animatediff_numerics!r} is not one of {', '.join(NUMERICS)}"),
    ]
    for group in ("motion_loras", "loras"):
        for i, lora in enumerate(v.model[group]):
            checks.append((0.0 <= lora.strength <= 2.0,
                           f"{prefix}model.{group}[{i}].strength: {lora.strength} not in [0, 2]"))
    return [message for ok, message in checks if not ok]


def stage_problems(cfg: DictConfig) -> list[str]:
    """The stage list is known, starts with a first stage, has no repeats; then each stage checks its settings."""
    stages = list(cfg.stages)
    unknown = [s for s in stages if s not in STAGES]
    if not stages:
        return ["stages: empty; start with t2v (or edit with input_video), e.g. stages: [t2v, face]"]
    if unknown:
        return [f"stages: {unknown[0]!r} is not one of {', '.join(STAGES)}"]
    if not STAGES[stages[0]].first or any(STAGES[s].first for s in stages[1:]):
        firsts = [name for name, stage in STAGES.items() if stage.first]
        return [f"stages: {stages} must start with exactly one of {', '.join(firsts)} and continue with "
                f"refinements ({', '.join(n for n in STAGES if n not in firsts)})"]
    if len(set(stages)) != len(stages):
        return [f"stages: {stages} repeats a stage"]
    return [problem for name in stages for problem in STAGES[name].check(cfg)]


def run_problems(cfg: DictConfig) -> list[str]:
    """Device, precision, attention, outputs: the run-wide keys."""
    kind, _, index = cfg.device.partition(":")
    context, freeu = cfg.context, cfg.freeu
    checks = [
        (freeu is None or freeu.version in (1, 2), f"freeu.version: {freeu and freeu.version} is not 1 or 2"),
        (freeu is None or all(x >= 0 for x in (freeu.b1, freeu.b2, freeu.s1, freeu.s2)),
         "freeu: b1, b2, s1 and s2 must be >= 0 (1 = unchanged)"),
        (context is None or 1 <= context.length <= MAX_FRAMES,
         f"context.length: {context and context.length} must be at least 1 and at most {MAX_FRAMES}"),
        (context is None or 0 <= context.overlap < context.length,
         f"context.overlap: {context and context.overlap} must be in [0, context.length)"),
        (cfg.precision in PRECISIONS, f"precision: {cfg.precision!r} is not one of {', '.join(PRECISIONS)}"),
        (cfg.device == "auto" or (kind in ("cpu", "cuda", "mps") and (index == "" or index.isdigit())),
         f"device: {cfg.device!r} is not auto, cpu, cuda, cuda:N or mps"),
        (cfg.attention in ("sdpa", "xformers"), f"attention: {cfg.attention!r} is not one of sdpa, xformers"),
        (cfg.sdpa_backend in SDPA_BACKEND_NAMES,
         f"sdpa_backend: {cfg.sdpa_backend!r} is not one of {', '.join(SDPA_BACKEND_NAMES)}"),
        (cfg.sdpa_backend == "auto" or cfg.attention == "sdpa",
         f"sdpa_backend: {cfg.sdpa_backend} chooses a PyTorch attention kernel, but attention is {cfg.attention}; "
         "use sdpa_backend=auto or attention=sdpa"),
        (len(cfg.formats) > 0 and all(f in FORMATS for f in cfg.formats),
         f"formats: {list(cfg.formats)} must be one or more of {', '.join(FORMATS)}"),
    ]
    return [message for ok, message in checks if not ok]


def stage_size_problems(cfg: DictConfig) -> list[str]:
    """A stage's pixel sizes (`face.size`, `face.max_size`, `tiled.tile`: any `size`, `max_size` or `tile` of a stage
    block) at most MAX_SIZE; checked before the stages' own checks, which compare these sizes."""
    return [f"{name}.{key}: {cfg[name][key]} is more than {MAX_SIZE} px" for name in STAGES if name in cfg
            for key in ("size", "max_size", "tile")
            if isinstance(cfg[name].get(key), int) and cfg[name][key] > MAX_SIZE]


def prompt_value(value, where: str, cfg: DictConfig, empty_ok: bool) -> Prompt:
    """A prompt (or negative prompt) as a string, or for prompt travel a {frame: text} mapping with integer frames in
    [0, frames); every text checked for its weighting syntax and identity references. A one-keyframe mapping is the
    plain prompt."""
    if isinstance(value, str):
        texts = {0: value}
    elif isinstance(value, (dict, DictConfig)) and len(value) > 0:
        texts = {}
        for frame, text in value.items():
            if not (isinstance(frame, int) and not isinstance(frame, bool) and 0 <= frame < cfg.frames):
                raise ConfigError(f"{where}: keyframe {frame!r} is not an integer frame in [0, {cfg.frames}); write "
                                  f"{{0: ..., 8: ...}} with frames counted from 0")
            texts[frame] = text
    else:
        raise ConfigError(f"{where}: must be a string, or a mapping from frame numbers to prompts (prompt travel)")
    for frame, text in texts.items():
        key = where if len(texts) == 1 else f"{where}[{frame}]"
        if not isinstance(text, str) or not (empty_ok or text.strip()):
            raise ConfigError(f"{key}: must be a {'' if empty_ok else 'non-empty '}string")
        problems = weighting_problems(text, cfg.prompt_weighting) if cfg.prompt_weighting in WEIGHTINGS else []
        if problems:
            raise ConfigError(f"{key}: {problems[0]}")
        bad = malformed_references(text)
        if bad:
            raise ConfigError(f"{key}: {bad[0]!r} is not an identity name (letters, digits, _ and - only); write "
                              f"embedding:NAME or <NAME> with a file stem from model.embeddings_dir")
        problem = placeholder_problem(text, key, cfg.identities is not None, required=not empty_ok)
        if problem:
            raise ConfigError(problem)
    return texts[0] if list(texts) == [0] else dict(sorted(texts.items()))


@dataclass(frozen=True)
class PromptEntry:
    """One entry of `prompts:`, checked, as written: its seeds may hold -1 (random) and its texts `{id}`."""

    prompt: Prompt
    negative_prompt: Prompt
    seeds: list[int]
    gamma: float


def prompt_entries(cfg: DictConfig) -> list[PromptEntry]:
    """Every prompt entry with its negative prompt, seeds and γ (its own, else the config's)."""
    if len(cfg.prompts) == 0:
        raise ConfigError("prompts: no prompts given; add a list of prompts to the config")
    entries = []
    for i, entry in enumerate(cfg.prompts):
        if isinstance(entry, str):
            entry = {"prompt": entry}
        if not isinstance(entry, (dict, DictConfig)):
            raise ConfigError(f"prompts[{i}]: expected a string or a mapping with 'prompt'")
        unknown = set(entry) - set(PROMPT_KEYS)
        if unknown:
            raise ConfigError(f"prompts[{i}]: unknown key(s) {sorted(unknown)}; allowed: {', '.join(PROMPT_KEYS)}")
        prompt = prompt_value(entry.get("prompt"), f"prompts[{i}].prompt", cfg, empty_ok=False)
        negative = prompt_value(entry.get("negative_prompt", cfg.negative_prompt), f"prompts[{i}].negative_prompt",
                                cfg, empty_ok=True)
        seeds = entry.get("seeds", cfg.seeds)
        seeds = list(seeds) if isinstance(seeds, (list, tuple)) or OmegaConf.is_list(seeds) else [seeds]
        if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and -1 <= s < MAX_SEED for s in seeds):
            raise ConfigError(f"prompts[{i}].seeds: {seeds!r} must be one or more integers in [0, 2^32) or -1 (random)")
        gamma = entry.get("gamma", cfg.gamma)
        if not (isinstance(gamma, (int, float)) and not isinstance(gamma, bool) and 0.0 <= gamma < 1.0):
            raise ConfigError(f"prompts[{i}].gamma: {gamma!r} not a number in [0, 1)")
        entries.append(PromptEntry(prompt, negative, seeds, float(gamma)))
    return entries


def seed_slots(entries: list[PromptEntry]) -> list[tuple[int, int]]:
    """(entry number, seed as written) of every prompt × seed, in grid order."""
    return [(i, seed) for i, entry in enumerate(entries) for seed in entry.seeds]


def expand_samples(cfg: DictConfig, rng: random.Random | None = None, seeds: list[int] | None = None) -> list[Sample]:
    """One Sample per prompt × seed × identity, in that nesting (the grid order of samples.jsonl and grid.gif).

    A `-1` seed is drawn now, once per prompt and seed (the identities of a grid share it), unless `seeds` gives
    the seed of every prompt × seed (a resumed run's, read back from its config.yaml)."""
    rng = rng or random.SystemRandom()
    entries = prompt_entries(cfg)
    identities = resolve_identities(cfg)
    slots = seed_slots(entries)
    if seeds is None:
        seeds = [rng.randrange(MAX_SEED) if seed == -1 else seed for _, seed in slots]
    samples = []
    for (i, _), seed in zip(slots, seeds, strict=True):
        entry = entries[i]
        for name, word in (identities or {None: None}).items():
            samples.append(Sample(len(samples), fill_prompt(entry.prompt, name, word),
                                  fill_prompt(entry.negative_prompt, name, word), seed, entry.gamma, name))
    return samples


def check_model(model: DictConfig, frames: int | None, prompts: list[str], prefix: str = "", context: bool = False):
    """The `model:` block's files (headers only), the frames the motion module sees at once (the context window's
    length when `context`) against its length, and the identities the prompts use; returns (ModelInfo,
    {identity name: file}). `prefix` names where the block sits (`validation.` in training configs)."""
    from magicme.inspector import inspect_model

    names = list(dict.fromkeys(n for p in prompts for n in referenced_names(p)))
    report = inspect_model(model, embedding_names=names)
    for check in report.checks:
        check.item = prefix + check.item
    report.raise_first()
    info = report.info
    limit = info.motion.max_seq_length if info.motion is not None else None
    if frames is not None and limit is not None and frames > limit:
        if context:
            raise ConfigError(f"context.length: windows of {frames} frames are more than the motion module's {limit}; "
                              f"lower context.length")
        raise ConfigError(f"{prefix}frames: {frames} is more than the motion module's {limit} frames; lower it, or "
                          f"set context: {{length: 16, overlap: 4}} to render it in overlapping windows")
    from magicme.embeddings import find_embeddings

    embeddings = find_embeddings(model.embeddings_dir) if names else {}
    return info, {name: embeddings[name] for name in names}


def model_files(cfg: DictConfig) -> list[tuple[str, str, str]]:
    """(config key, path, what) of every model the run loads besides its `model:` block — each control entry's
    ControlNet, preprocessor and person segmenter, SparseCtrl, Face VCD's CLIPSeg, Tiled VCD's upscaler file — for
    the inspector (`inspect_files`); run after `check_settings`."""
    files = []
    for entry in control_entries(cfg):
        files.append((f"{entry.key}.model", entry.model, "ControlNet"))
        if entry.preprocessor is not None:
            files.append((f"{entry.key}.preprocessor", entry.preprocessor, f"{entry.type} preprocessor"))
        if entry.person is not None:
            files.append((f"{entry.key}.person", entry.person, "CLIPSeg"))
    sparse = sparse_settings(cfg)
    if sparse is not None:
        files.append(("sparse_control.model", sparse.model, "SparseCtrl"))
    if "face" in cfg.stages and cfg.face.get("detector") == "clipseg":
        files.append(("face.clipseg_model", cfg.face.clipseg_model, "CLIPSeg"))
    if "tiled" in cfg.stages and cfg.tiled.upscaler != "lanczos":
        files.append(("tiled.upscaler", cfg.tiled.upscaler, "upscaler"))
    return files


def check_settings(cfg: DictConfig) -> list[Sample]:
    """The checks that need no file header and no heavy library (a fraction of a second); returns the samples."""
    _first(video_problems(cfg) + stage_size_problems(cfg) + stage_problems(cfg) + run_problems(cfg)
           + control_problems(cfg) + sparse_problems(cfg))
    check_output_dir(cfg.output_dir)
    return expand_samples(cfg)


def denoise_schedules(cfg: DictConfig) -> list[tuple[str, Any, int, str]]:
    """Every schedule the run's stages ask a scheduler for: (scheduler key, its block, schedule length, the setting
    that sets the length) — the first stage's on the model's scheduler, each partial denoise's (magicme/steps.py)
    on its own scheduler or the model's."""
    model = ("model.scheduler", cfg.model.scheduler)
    schedules = []
    for name in cfg.stages:
        settings = cfg.get(name)
        if name == "edit":
            if cfg.input_strength > 0:
                schedules.append((*model, schedule_length(cfg.steps, cfg.input_strength), "input_strength"))
        elif STAGES[name].first:
            schedules.append((*model, cfg.steps, "steps"))
        elif settings is not None and "strength" in settings and settings.strength > 0:
            own = settings.get("scheduler")
            scheduler = (f"{name}.scheduler", own) if own is not None else model
            steps = settings.steps if settings.get("steps") is not None else cfg.steps
            schedules.append((*scheduler, schedule_length(steps, settings.strength), f"{name}.strength"))
    return schedules


def check_sample_config(cfg: DictConfig) -> tuple[list[Sample], dict[str, Path]]:
    """Everything that can be checked without loading a model, cheapest first; returns the samples (seeds
    resolved) and the identity files their prompts use."""
    samples = check_settings(cfg)
    from magicme.devices import device_problem, resolve_device  # imports torch: only once the cheap checks passed

    _first([p for p in [device_problem(cfg.device)] if p])
    if cfg.cpu_offload and resolve_device(cfg.device).type == "cpu":
        raise ConfigError("cpu_offload: only meaningful with a GPU; set cpu_offload=false on a CPU")
    if cfg.attention == "xformers" and not installed("xformers"):
        raise ConfigError("attention: xformers is not installed; pip install xformers or use sdpa")
    from magicme.devices import resolve_dtype
    from magicme.speed import compile_backend_problem, fp8_problem, sdpa_problem

    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.precision, device)
    _first([p for p in [sdpa_problem(cfg.sdpa_backend, device, dtype),
                        cfg.compile and compile_backend_problem(cfg.compile_backend),
                        cfg.fp8 and fp8_problem(device, dtype)] if p])
    prompts = [text for s in samples for p in (s.prompt, s.negative_prompt) for text in keyframes(p).values()]
    frames_at_once = cfg.frames if cfg.context is None else min(cfg.frames, cfg.context.length)
    info, embeddings = check_model(cfg.model, frames_at_once, prompts, context=cfg.context is not None)
    from magicme.inspector import inspect_files

    inspect_files(model_files(cfg)).raise_first()
    stage_schedulers = {f"{name}.scheduler": cfg[name].scheduler for name in cfg.stages
                        if name in cfg and cfg[name].get("scheduler") is not None}
    family = get_family(cfg.model.family)
    if cfg.control and not family.CONTROL:
        raise ConfigError(f"control: ControlNets are not wired for model.family {cfg.model.family} yet (SD1.5 only: "
                          "docs/control.md); remove the control entries")
    if cfg.sparse_control is not None and not family.CONTROL:
        raise ConfigError(f"sparse_control: SparseCtrl is not wired for model.family {cfg.model.family} (SD1.5 only: "
                          "docs/control.md); remove sparse_control")
    _first([p for p in [motion_problem(cfg, info.motion.version if info.motion is not None else None)] if p])
    family.check(cfg.model, stage_schedulers, denoise_schedules(cfg))
    from magicme.prompt_length import check_prompt_lengths

    check_prompt_lengths(cfg, samples, embeddings)
    return samples, embeddings


def prompt_tokens(prompt: Prompt, tokens: dict[str, int]) -> int:
    """Token count of a prompt: of its longest keyframe when it travels."""
    return max(tokens[text] for text in keyframes(prompt).values())


def resolved_config(cfg: DictConfig, samples: list[Sample], tokens: dict[str, int]) -> DictConfig:
    """The config to save next to the outputs: one entry per prompt × seed with the seed actually used (and, for the
    record, the token counts of its prompt and negative prompt, the longest over a grid's identities), the grid's
    identities by name with their class words; the top-level `seeds` are the shared seeds as the first prompt without
    its own used them (the union of every prompt's seeds would be none of them); re-running it reproduces the run exactly, and a resumed run reads
    its random seeds back from it."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    entries = prompt_entries(cfg)
    slots = seed_slots(entries)
    per_slot = len(samples) // len(slots)
    resolved["prompts"], used = [], {}
    for k, (i, _) in enumerate(slots):
        group = samples[k * per_slot:(k + 1) * per_slot]
        used.setdefault(i, []).append(group[0].seed)
        resolved["prompts"].append({
            "prompt": entries[i].prompt, "negative_prompt": entries[i].negative_prompt, "seeds": [group[0].seed],
            "gamma": entries[i].gamma, "tokens": [max(prompt_tokens(s.prompt, tokens) for s in group),
                                                  max(prompt_tokens(s.negative_prompt, tokens) for s in group)]})
    shared = [i for i, entry in enumerate(cfg.prompts) if not (OmegaConf.is_dict(entry) and "seeds" in entry)]
    if shared:
        resolved["seeds"] = used[shared[0]]
    identities = resolve_identities(cfg)
    if identities is not None:
        resolved["identities"], resolved["class_words"] = list(identities), identities
    return OmegaConf.create(resolved)

