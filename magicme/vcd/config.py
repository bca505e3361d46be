"""Settings of the Face VCD, Tiled VCD and edit stages: dataclass defaults and checks that run before any model
loads. Each `validate_*` takes the stage's section (dict or OmegaConf), fills in the defaults, and returns it, or
raises one `ConfigError` naming the key (`face.strength`, …).

`steps`, `guidance_scale` and `gamma` left `null` mean "the run's value" (the sample's γ): the caller passes them to
the stage function.
"""

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from magicme.errors import ConfigError

DETECTORS = ("clipseg", "dlib")
UPSCALER_SUFFIXES = (".pth", ".pt", ".safetensors", ".ckpt")


@dataclass
class FaceConfig:
    """Face VCD (ComfyUI graph: YOLOv8 face boxes + SAM, crop_factor 3, guide size 512, denoise 0.8, feather 5)."""
    detector: str = "clipseg"  # clipseg (the paper's prompt-to-segmentation) or dlib (HOG, no model file)
    clipseg_model: str = "models/clipseg"  # CIDAS/clipseg-rd64-refined folder
    clipseg_prompt: str = "face"
    threshold: float = 0.5  # CLIPSeg probability that counts as face (Impact Pack bbox_threshold 0.5)
    dlib_upsample: int = 1  # dlib: upsample the frame this many times to find smaller faces
    dlib_threshold: float = 0.0  # dlib: score offset (higher → fewer detections)
    min_size: int = 10  # drop face boxes narrower/shorter than this (Impact Pack drop_size 10)
    track_iou: float = 0.3  # boxes in consecutive frames with this IoU belong to the same face
    crop_factor: float = 3.0  # crop = face box (union over frames) × this, squared
    size: int = 512  # the crop is denoised at size × size (guide_size 512)
    strength: float = 0.8  # denoise 0.8
    steps: Optional[int] = None
    guidance_scale: Optional[float] = None
    gamma: Optional[float] = None
    feather: int = 5  # px of linear blend inside the face region when pasting back (SEGSPaste feather 5)


@dataclass
class TiledConfig:
    """Tiled VCD (ComfyUI graph: UltimateSDUpscale ×2 with 4x-UltraSharp, 512 tiles, padding 32, denoise 0.2)."""
    scale: float = 2.0
    upscaler: str = "lanczos"  # or an ESRGAN-family model file (.pth/.safetensors; needs spandrel + torchvision)
    tile: int = 512  # each axis is cut into ceil(length / tile) tiles (1024 → 2 × 2, as the paper's 4 tiles) ...
    overlap: int = 64  # ... widened so neighbours share at least this many px (1024 → tiles of 544)
    strength: float = 0.2  # denoise 0.2
    steps: Optional[int] = None
    guidance_scale: Optional[float] = None
    gamma: Optional[float] = None


@dataclass
class EditConfig:
    """Editing an input video with the ID prompt: partial noise, then denoising (strength 0.6)."""
    strength: float = 0.6
    steps: Optional[int] = None
    guidance_scale: Optional[float] = None
    gamma: Optional[float] = None


def _merge(name: str, schema: type, section) -> DictConfig:
    try:
        return OmegaConf.merge(OmegaConf.structured(schema), section or {})
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        raise ConfigError(f"{name}.{key}: {str(err).splitlines()[0]}" if key else f"{name}: {err}") from err


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _common(name: str, cfg: DictConfig) -> None:
    _check(0.0 <= cfg.strength <= 1.0, f"{name}.strength: {cfg.strength} not in [0, 1]")
    _check(cfg.steps is None or cfg.steps >= 1, f"{name}.steps: {cfg.steps} must be at least 1 (or null)")
    _check(cfg.guidance_scale is None or cfg.guidance_scale >= 0,
           f"{name}.guidance_scale: {cfg.guidance_scale} must be >= 0 (or null)")
    _check(cfg.gamma is None or 0.0 <= cfg.gamma < 1.0, f"{name}.gamma: {cfg.gamma} not in [0, 1) (or null)")


def validate_face_config(section=None) -> DictConfig:
    cfg = _merge("face", FaceConfig, section)
    _check(cfg.detector in DETECTORS, f"face.detector: {cfg.detector!r} is not one of {', '.join(DETECTORS)}")
    if cfg.detector == "clipseg":
        _check(Path(cfg.clipseg_model, "config.json").is_file(),
               f"face.clipseg_model: no CLIPSeg model in {cfg.clipseg_model}; run download_checkpoint.sh --only "
               f"clipseg, or use face.detector=dlib")
        _check(cfg.clipseg_prompt.strip() != "", "face.clipseg_prompt: must not be empty")
    elif importlib.util.find_spec("dlib") is None:
        raise ConfigError("face.detector: dlib is not installed; pip install 'magicme[faces]' or use clipseg")
    _check(0.0 < cfg.threshold < 1.0, f"face.threshold: {cfg.threshold} not in (0, 1)")
    _check(0 <= cfg.dlib_upsample <= 3, f"face.dlib_upsample: {cfg.dlib_upsample} not in [0, 3]")
    _check(cfg.min_size >= 0, f"face.min_size: {cfg.min_size} must be >= 0")
    _check(0.0 < cfg.track_iou <= 1.0, f"face.track_iou: {cfg.track_iou} not in (0, 1]")
    _check(cfg.crop_factor >= 1.0, f"face.crop_factor: {cfg.crop_factor} must be >= 1")
    _check(cfg.size >= 8 and cfg.size % 8 == 0, f"face.size: {cfg.size} must be a positive multiple of 8")
    _check(cfg.feather >= 0, f"face.feather: {cfg.feather} must be >= 0")
    _common("face", cfg)
    return cfg


def validate_tiled_config(section=None) -> DictConfig:
    cfg = _merge("tiled", TiledConfig, section)
    _check(1.0 <= cfg.scale <= 8.0, f"tiled.scale: {cfg.scale} not in [1, 8]")
    if cfg.upscaler != "lanczos":
        path = Path(cfg.upscaler)
        _check(path.is_file() and path.suffix in UPSCALER_SUFFIXES,
               f"tiled.upscaler: {cfg.upscaler} is neither 'lanczos' nor an upscaler model file "
               f"({', '.join(UPSCALER_SUFFIXES)})")
        _check(importlib.util.find_spec("spandrel") is not None,
               "tiled.upscaler: a model file needs spandrel (pip install spandrel; it requires torchvision), or use "
               "tiled.upscaler=lanczos")
    _check(cfg.tile >= 8 and cfg.tile % 8 == 0, f"tiled.tile: {cfg.tile} must be a positive multiple of 8")
    _check(0 <= cfg.overlap <= cfg.tile // 2, f"tiled.overlap: {cfg.overlap} not in [0, tile/2 = {cfg.tile // 2}]")
    _common("tiled", cfg)
    return cfg


def validate_edit_config(section=None) -> DictConfig:
    cfg = _merge("edit", EditConfig, section)
    _common("edit", cfg)
    return cfg


def stage_settings(section: DictConfig, name: str, steps, guidance_scale, gamma) -> dict:
    """steps / guidance_scale / γ of a stage: its own value where set, else the run's (which the caller gives)."""
    run = {"steps": steps, "guidance_scale": guidance_scale, "gamma": gamma}
    settings = {key: run[key] if section[key] is None else section[key] for key in run}
    missing = [key for key, value in settings.items() if value is None]
    if missing:
        raise ValueError(f"{name}: {', '.join(missing)} null in the stage's config; pass the run's values")
    return settings
