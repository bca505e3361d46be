"""The sampling config: schema, loading with command-line overrides, and validation before any model loads.

A config is a YAML file (see configs/sample/example.yaml) merged over the defaults below; `key=value` overrides
(OmegaConf dot-list, e.g. `steps=4 model.scheduler=euler`) come last. `validate_sample_config` checks every key,
type, range, file and identity name and raises one `ConfigError` naming the first problem, so a typo never costs a
model load. Relative paths are relative to the directory you run from (the repository root).
"""

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from diffusers.loaders.single_file_utils import convert_animatediff_checkpoint_to_diffusers
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from magicme.embeddings import find_embeddings, load_embedding_file, check_width, resolve_names
from magicme.errors import ConfigError
from magicme.models import CHECKPOINT_SUFFIXES, SCHEDULERS, is_hub_id, resolve_device
from magicme.motion_module import inspect_motion_module, lora_targets, read_state_dict
from magicme.vcd.stages import FaceConfig, TiledConfig, validate_face_config, validate_tiled_config

STAGES = ("t2v", "face", "tiled")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
FORMATS = ("mp4", "gif")
MAX_SEED = 2**32


@dataclass
class MotionLoraConfig:
    path: str = "???"
    strength: float = 1.0


@dataclass
class ModelConfig:
    base: str = "models/stable-diffusion-v1-5"  # diffusers folder, single .safetensors/.ckpt file, or Hub id
    base_config: Optional[str] = "models/stable-diffusion-v1-5"  # configs + tokenizer for a single-file base
    vae: Optional[str] = None  # separate VAE: folder or single file (needed for "noVAE" checkpoints)
    motion_module: str = "models/motion_module/mm_sd_v15_v2.ckpt"
    motion_loras: list[MotionLoraConfig] = field(default_factory=list)
    embeddings_dir: Optional[str] = "models/embeddings"
    scheduler: str = "ddim"
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


@dataclass
class SampleConfig(VideoSettings):
    prompts: list[Any] = field(default_factory=list)  # strings, or {prompt, negative_prompt, seeds, gamma}
    stages: list[str] = field(default_factory=lambda: ["t2v"])  # t2v, then optionally face and/or tiled
    face: FaceConfig = field(default_factory=FaceConfig)  # Face VCD settings (used when "face" is a stage)
    tiled: TiledConfig = field(default_factory=TiledConfig)  # Tiled VCD settings (used when "tiled" is a stage)
    input_video: Optional[str] = None  # re-render this video (MP4/GIF/frame folder) instead of text-to-video
    input_strength: float = 0.6  # how much of the input video is re-noised and denoised with the ID prompt
    precision: str = "auto"  # auto = fp16 on GPU, fp32 on CPU
    device: str = "auto"  # auto = cuda, then mps, then cpu
    attention: str = "sdpa"  # or xformers
    vae_slicing: bool = False
    cpu_offload: bool = False
    formats: list[str] = field(default_factory=lambda: list(FORMATS))
    save_frames: bool = False
    output_dir: str = "outputs"


def load_config(path: Path | str | None, overrides: list[str] | None = None) -> DictConfig:
    """Defaults ← YAML file ← `key=value` overrides, type-checked against the schema."""
    schema = OmegaConf.structured(SampleConfig)
    try:
        layers = [schema]
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise ConfigError(f"{path}: config file not found")
            layers.append(OmegaConf.load(path))
        layers.append(OmegaConf.from_dotlist(list(overrides or [])))
        return OmegaConf.merge(*layers)
    except OmegaConfBaseException as err:
        raise ConfigError(describe_omegaconf_error(err, path)) from err


def describe_omegaconf_error(err: OmegaConfBaseException, path: Path | str | None) -> str:
    """One line: `<key>: <problem>`, instead of OmegaConf's multi-line report."""
    key = getattr(err, "full_key", None) or "config"
    message = str(err).splitlines()[0] if str(err) else type(err).__name__
    source = f" (in {path})" if path else ""
    return f"{key}: {message}{source}"


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _choice(key: str, value: str, choices) -> None:
    _check(value in choices, f"{key}: {value!r} is not one of {', '.join(choices)}")


def _local_or_hub(key: str, value: str) -> None:
    _check(Path(value).exists() or is_hub_id(value),
           f"{key}: {value} not found; give a local path (run download_checkpoint.sh for real weights, or "
           f"scripts/make_tiny_models.py for the tiny test models) or a Hugging Face Hub id")


def validate_model(model: DictConfig) -> tuple[int, int]:
    """Check the `model:` block's files; returns the text encoder's width (0 if unknown before loading a Hub
    model) and the motion module's maximum frame count."""
    _local_or_hub("model.base", model.base)
    single_file = Path(model.base).is_file()
    _check(not single_file or Path(model.base).suffix in CHECKPOINT_SUFFIXES,
           f"model.base: {model.base} is a file but not a checkpoint ({', '.join(CHECKPOINT_SUFFIXES)})")
    config_root = model.base_config if single_file else model.base
    if single_file:
        _check(model.base_config is not None and Path(model.base_config, "tokenizer").is_dir(),
               f"model.base_config: a single-file base needs a diffusers SD1.5 folder with tokenizer/ and component "
               f"configs (e.g. models/stable-diffusion-v1-5 from download_checkpoint.sh); got {model.base_config}")
    if model.vae is not None:
        _local_or_hub("model.vae", model.vae)
    mm = Path(model.motion_module)
    _check(mm.exists(), f"model.motion_module: {mm} not found; run download_checkpoint.sh --only motion")
    if mm.is_file():
        try:
            state = read_state_dict(mm)
            max_frames = inspect_motion_module(state, mm).max_seq_length
        except ConfigError as err:
            raise ConfigError(f"model.motion_module: {err}") from err
        motion_weights = set(convert_animatediff_checkpoint_to_diffusers(state))
    else:
        _check((mm / "config.json").is_file(), f"model.motion_module: {mm} is neither a motion module file nor a "
                                               "diffusers MotionAdapter folder (config.json missing)")
        max_frames = int(OmegaConf.load(mm / "config.json").get("motion_max_seq_length", 32))
        motion_weights = None
    for i, lora in enumerate(model.motion_loras):
        key = f"model.motion_loras[{i}]"
        _check(Path(lora.path).is_file(), f"{key}.path: {lora.path} not found")
        _check(0.0 <= lora.strength <= 2.0, f"{key}.strength: {lora.strength} not in [0, 2]")
        try:
            targets = lora_targets(read_state_dict(lora.path))
        except ConfigError as err:
            raise ConfigError(f"{key}.path: {err}") from err
        _check(bool(targets), f"{key}.path: {lora.path} is not a MotionLoRA (no '..._lora.down.weight' keys)")
        _check(motion_weights is None or set(targets) <= motion_weights,
               f"{key}.path: {lora.path} does not fit the motion module {mm}; official MotionLoRAs need a v2 module")
    _choice("model.scheduler", model.scheduler, SCHEDULERS)
    _choice("model.animatediff_numerics", model.animatediff_numerics, ("original", "diffusers"))
    encoder_config = Path(config_root, "text_encoder", "config.json")
    width = int(OmegaConf.load(encoder_config).hidden_size) if encoder_config.is_file() else 0
    return width, max_frames


def expand_samples(cfg: DictConfig, rng: random.Random | None = None) -> list[dict]:
    """One dict per (prompt, seed) with its negative prompt and γ; `-1` seeds are drawn now and kept."""
    rng = rng or random.SystemRandom()
    samples = []
    for i, entry in enumerate(cfg.prompts):
        if isinstance(entry, str):
            entry = {"prompt": entry}
        _check(isinstance(entry, (dict, DictConfig)), f"prompts[{i}]: expected a string or a mapping with 'prompt'")
        unknown = set(entry) - {"prompt", "negative_prompt", "seeds", "gamma"}
        _check(not unknown, f"prompts[{i}]: unknown key(s) {sorted(unknown)}; allowed: prompt, negative_prompt, "
                            f"seeds, gamma")
        prompt = entry.get("prompt")
        _check(isinstance(prompt, str) and prompt.strip() != "", f"prompts[{i}].prompt: must be a non-empty string")
        seeds = list(entry.get("seeds", cfg.seeds))
        _check(len(seeds) > 0, f"prompts[{i}].seeds: give at least one seed")
        for seed in seeds:
            _check(isinstance(seed, int) and -1 <= seed < MAX_SEED,
                   f"prompts[{i}].seeds: {seed!r} is not an integer in [0, 2^32) or -1 (random)")
        gamma = float(entry.get("gamma", cfg.gamma))
        _check(0.0 <= gamma < 1.0, f"prompts[{i}].gamma: {gamma} not in [0, 1)")
        negative = entry.get("negative_prompt", cfg.negative_prompt)
        for seed in seeds:
            samples.append({"prompt": prompt, "negative_prompt": negative, "gamma": gamma,
                            "seed": rng.randrange(MAX_SEED) if seed == -1 else seed})
    return samples


def validate_sample_config(cfg: DictConfig) -> tuple[list[dict], dict[str, Path]]:
    """Check everything that can be checked without loading a model.

    Returns the expanded samples (seeds resolved) and the identity files the prompts use.
    """
    _check(len(cfg.prompts) > 0, "prompts: no prompts given; add a list of prompts to the config")
    _check(cfg.steps >= 1, f"steps: {cfg.steps} must be at least 1")
    _check(cfg.guidance_scale >= 0, f"guidance_scale: {cfg.guidance_scale} must be >= 0")
    for key in ("width", "height"):
        _check(cfg[key] >= 8 and cfg[key] % 8 == 0, f"{key}: {cfg[key]} must be a positive multiple of 8")
    _check(cfg.fps >= 1, f"fps: {cfg.fps} must be at least 1")
    _check(0.0 <= cfg.gamma < 1.0, f"gamma: {cfg.gamma} not in [0, 1)")
    _check(len(cfg.stages) > 0 and cfg.stages[0] == "t2v", f"stages: must start with t2v, got {list(cfg.stages)}")
    for stage in cfg.stages:
        _choice("stages", stage, STAGES)
    _check(len(set(cfg.stages)) == len(cfg.stages), f"stages: {list(cfg.stages)} repeats a stage")
    if "face" in cfg.stages:
        validate_face_config(cfg.face)
    if "tiled" in cfg.stages:
        validate_tiled_config(cfg.tiled)
    if cfg.input_video is not None:
        _check(Path(cfg.input_video).exists(), f"input_video: {cfg.input_video} not found")
    _check(0.0 <= cfg.input_strength <= 1.0, f"input_strength: {cfg.input_strength} not in [0, 1]")
    _choice("precision", cfg.precision, PRECISIONS)
    _check(cfg.device == "auto" or cfg.device.split(":")[0] in ("cpu", "cuda", "mps"),
           f"device: {cfg.device!r} is not auto, cpu, cuda, cuda:N or mps")
    _check(not (cfg.cpu_offload and resolve_device(cfg.device).type == "cpu"),
           "cpu_offload: only meaningful with a GPU; set cpu_offload=false on a CPU")
    _choice("attention", cfg.attention, ("sdpa", "xformers"))
    if cfg.attention == "xformers":
        try:
            import xformers  # noqa: F401 - only checking it is installed
        except ImportError as err:
            raise ConfigError("attention: xformers is not installed; pip install xformers or use sdpa") from err
    _check(len(cfg.formats) > 0, "formats: give at least one of mp4, gif")
    for fmt in cfg.formats:
        _choice("formats", fmt, FORMATS)
    samples = expand_samples(cfg)
    width, limit = validate_model(cfg.model)
    _check(1 <= cfg.frames <= limit, f"frames: {cfg.frames} not in [1, {limit}] (the motion module's maximum)")
    prompts = [s["prompt"] for s in samples] + [s["negative_prompt"] for s in samples]
    embeddings_dir = cfg.model.embeddings_dir
    available = find_embeddings(embeddings_dir) if embeddings_dir and Path(embeddings_dir).is_dir() else {}
    embeddings = resolve_names(prompts, available)
    for name, path in embeddings.items():
        if width:
            check_width(name, path, load_embedding_file(path), width)
    return samples, embeddings


def resolved_config(cfg: DictConfig, samples: list[dict]) -> DictConfig:
    """The config to save next to the outputs: every prompt with the seeds actually used, so re-running it
    reproduces the run exactly."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved["prompts"] = [
        {"prompt": s["prompt"], "negative_prompt": s["negative_prompt"], "seeds": [s["seed"]], "gamma": s["gamma"]}
        for s in samples
    ]
    resolved["seeds"] = sorted({s["seed"] for s in samples})
    return OmegaConf.create(resolved)
