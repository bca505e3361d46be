"""Face VCD, Tiled VCD and ID video editing: the refinement stages of Magic-Me, each a partial noise-and-denoise
with the same ID prompt through the already-loaded pipeline (no second UNet).

Face VCD: find the face in every frame, crop one square box (`crop_factor` × the face) for all frames, upscale the
crop to `size`, re-noise it with the 3D prior at `strength` and denoise with the ID prompt, then paste it back with a
feathered mask over the face only. Tiled VCD: upscale ×`scale`, denoise overlapping tiles of `tile` px at low
strength, cross-fade the tiles. Editing: re-render an input video at `input_strength`.
"""

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from magicme.errors import ConfigError
from magicme.pipeline import denoising_steps
from magicme.vcd.geometry import Box, crop_box, feather_mask, link_tracks, tile_weight, tile_windows, union_box
from magicme.vcd.resize import resize_video
from magicme.video_io import read_video, to_uint8

log = logging.getLogger("magicme")
DETECTORS = ("clipseg", "dlib")


@dataclass
class FaceConfig:
    detector: str = "clipseg"  # clipseg (prompt-to-segmentation, the model training uses) or dlib (HOG, offline)
    clipseg_model: str = "models/clipseg"
    prompt: str = "face"  # CLIPSeg prompt
    threshold: float = 0.5  # CLIPSeg probability that counts as face
    min_face: int = 10  # ignore detections smaller than this (px); the ComfyUI graph's drop_size
    crop_factor: float = 3.0  # crop box = crop_factor × the face box (ComfyUI graph: 3)
    size: int = 512  # the crop is denoised at size × size (guide size 512)
    strength: float = 0.8  # denoise 0.8
    feather: int = 5  # px of the paste mask's soft edge
    steps: Optional[int] = None  # None = the run's steps
    guidance_scale: Optional[float] = None  # None = the run's
    gamma: Optional[float] = None  # None = the sample's γ


@dataclass
class TiledConfig:
    scale: int = 2  # upscale factor
    upscaler: str = "lanczos"  # lanczos, or an ESRGAN-family model file (needs the optional `spandrel` package)
    tile: int = 512  # 2x of 512 = 4 tiles, as the paper
    padding: int = 32  # context px around each tile (ComfyUI graph: tile_padding 32); neighbours cross-fade over 2x
    strength: float = 0.2  # denoise 0.2
    steps: Optional[int] = None
    guidance_scale: Optional[float] = None
    gamma: Optional[float] = None


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def validate_face_config(face) -> None:
    _check(face.detector in DETECTORS, f"face.detector: {face.detector!r} is not one of {', '.join(DETECTORS)}")
    if face.detector == "clipseg":
        _check(Path(face.clipseg_model, "config.json").is_file(),
               f"face.clipseg_model: no CLIPSeg model in {face.clipseg_model}; run download_checkpoint.sh --only "
               "clipseg, or use face.detector=dlib")
    else:
        try:
            import dlib  # noqa: F401 - only checking it is installed
        except ImportError as err:
            raise ConfigError("face.detector: dlib is not installed; pip install dlib-bin") from err
    _check(0.0 < face.threshold < 1.0, f"face.threshold: {face.threshold} not in (0, 1)")
    _check(face.crop_factor >= 1.0, f"face.crop_factor: {face.crop_factor} must be >= 1")
    _check(face.size >= 8 and face.size % 8 == 0, f"face.size: {face.size} must be a positive multiple of 8")
    _check(0.0 <= face.strength <= 1.0, f"face.strength: {face.strength} not in [0, 1]")
    _check(face.feather >= 0, f"face.feather: {face.feather} must be >= 0")
    _check(face.steps is None or face.steps >= 1, f"face.steps: {face.steps} must be >= 1")
    _check(face.gamma is None or 0.0 <= face.gamma < 1.0, f"face.gamma: {face.gamma} not in [0, 1)")


def validate_tiled_config(tiled) -> None:
    _check(tiled.scale in (1, 2, 3, 4), f"tiled.scale: {tiled.scale} not one of 1, 2, 3, 4")
    if tiled.upscaler != "lanczos":
        _check(Path(tiled.upscaler).is_file(), f"tiled.upscaler: {tiled.upscaler} is neither 'lanczos' nor a file")
        try:
            import spandrel  # noqa: F401 - only checking it is installed
        except ImportError as err:
            raise ConfigError("tiled.upscaler: model files need `pip install spandrel` (it needs torchvision); "
                              "or use tiled.upscaler=lanczos") from err
    _check(tiled.tile >= 64 and tiled.tile % 8 == 0, f"tiled.tile: {tiled.tile} must be a multiple of 8 >= 64")
    _check(0 <= tiled.padding < tiled.tile // 2 and tiled.padding % 8 == 0,
           f"tiled.padding: {tiled.padding} must be a multiple of 8 in [0, tile/2)")
    _check(0.0 <= tiled.strength <= 1.0, f"tiled.strength: {tiled.strength} not in [0, 1]")
    _check(tiled.steps is None or tiled.steps >= 1, f"tiled.steps: {tiled.steps} must be >= 1")
    _check(tiled.gamma is None or 0.0 <= tiled.gamma < 1.0, f"tiled.gamma: {tiled.gamma} not in [0, 1)")


def detect_faces_dlib(video: np.ndarray, min_face: int) -> list[list[Box]]:
    """dlib's HOG frontal-face detector on every frame (one upsampling, for faces down to ~40 px)."""
    import dlib

    detector = dlib.get_frontal_face_detector()
    h, w = video.shape[1:3]
    found = []
    for frame in to_uint8(video):
        # dlib reads the buffer as C-ordered rows: a strided view would silently give wrong detections
        rects = detector(np.ascontiguousarray(frame), 1)
        boxes = [(max(0, r.left()), max(0, r.top()), min(w, r.right()), min(h, r.bottom())) for r in rects]
        found.append([b for b in boxes if min(b[2] - b[0], b[3] - b[1]) >= min_face])
    return found


def boxes_from_probabilities(probs: np.ndarray, threshold: float, min_face: int) -> list[list[Box]]:
    """Per frame, the bounding box of each connected region above `threshold` (CLIPSeg face regions)."""
    from scipy import ndimage

    found = []
    for frame in probs:
        labels, _ = ndimage.label(frame >= threshold)
        boxes = [(s[1].start, s[0].start, s[1].stop, s[0].stop) for s in ndimage.find_objects(labels) if s]
        found.append([b for b in boxes if min(b[2] - b[0], b[3] - b[1]) >= min_face])
    return found


@functools.lru_cache(maxsize=2)
def clipseg(model_path: str, device: str):
    """One CLIPSeg per run, however many videos it refines."""
    from magicme.segmentation import ClipSegSegmenter

    return ClipSegSegmenter(model_path, device=device)


def detect_faces(video: np.ndarray, face, device) -> list[list[Box]]:
    if face.detector == "dlib":
        return detect_faces_dlib(video, face.min_face)
    segmenter = clipseg(str(face.clipseg_model), str(device))
    return boxes_from_probabilities(segmenter.probabilities(video, face.prompt), face.threshold, face.min_face)


def refine_faces(video: np.ndarray, tracks: list[list[Box]], denoise, crop_factor: float, size: int,
                 feather: int, device: str | torch.device = "cpu") -> np.ndarray:
    """Crop each track's box from all frames, `denoise` it at size × size, paste it back over the face only."""
    out = video.copy()
    h, w = video.shape[1:3]
    for track in tracks:
        face = union_box(track)
        x0, y0, x1, y1 = crop_box(face, crop_factor, h, w)
        crop = resize_video(out[:, y0:y1, x0:x1], size, size, device)
        refined = resize_video(denoise(crop), y1 - y0, x1 - x0, device)
        local_face = (face[0] - x0, face[1] - y0, face[2] - x0, face[3] - y0)
        mask = feather_mask(y1 - y0, x1 - x0, local_face, feather)[None, ..., None]
        under = out[:, y0:y1, x0:x1]
        # exactly the input where the mask is 0 and exactly the refined crop where it is 1 (no float round-off)
        out[:, y0:y1, x0:x1] = np.where(mask == 1.0, refined, under + mask * (refined - under))
    return out


def run_face_stage(pipe, video: np.ndarray, prompt: str, negative_prompt: str, generator, cfg, run) -> tuple:
    """Face VCD on one video; `run` holds the run's steps, guidance and the sample's γ (the stage's defaults)."""
    tracks = link_tracks(detect_faces(video, cfg, pipe.device))
    if not tracks:
        log.warning("face stage: no face found; the video passes through unchanged")
        return video.copy(), {"faces": 0, "passed_through": True}

    if denoising_steps(cfg.strength, _or(cfg.steps, run["steps"])) == 0:
        # nothing to denoise: skip the crop's resampling round trip too, so the video comes back unchanged
        return video.copy(), {"faces": len(tracks), "passed_through": True}

    def denoise(crop: np.ndarray) -> np.ndarray:
        return pipe.video_to_video(
            crop, prompt, negative_prompt, generator, gamma=_or(cfg.gamma, run["gamma"]), strength=cfg.strength,
            steps=_or(cfg.steps, run["steps"]), guidance_scale=_or(cfg.guidance_scale, run["guidance_scale"]),
            progress=False,
        )

    refined = refine_faces(video, tracks, denoise, cfg.crop_factor, cfg.size, cfg.feather, pipe.device)
    return refined, {"faces": len(tracks), "passed_through": False, "boxes": [list(union_box(t)) for t in tracks]}


def upscale(video: np.ndarray, scale: int, upscaler: str, device) -> np.ndarray:
    """×`scale`: Lanczos, or an ESRGAN-family model through spandrel (its output resized to exactly ×scale)."""
    h, w = video.shape[1:3]
    if upscaler == "lanczos":
        return resize_video(video, h * scale, w * scale, device)
    import spandrel

    model = spandrel.ModelLoader().load_from_file(upscaler).to(device).eval()
    with torch.no_grad():
        frames = [model(torch.from_numpy(f).permute(2, 0, 1)[None].to(device)).clamp(0, 1)[0].permute(1, 2, 0)
                  .cpu().numpy() for f in video]
    return resize_video(np.stack(frames), h * scale, w * scale, device)


def blend_tiles(video: np.ndarray, tile: int, padding: int, denoise, ramp: int | None = None) -> np.ndarray:
    """Denoise padded tiles and cross-fade them with smooth weights normalised by their sum; the weights ramp up
    over `ramp` px (default: the 2·padding the neighbours share; 0 = plain averaging)."""
    h, w = video.shape[1:3]
    acc = np.zeros_like(video)
    total = np.zeros((h, w, 1), dtype=np.float32)
    for y0, y1 in tile_windows(h, tile, padding):
        for x0, x1 in tile_windows(w, tile, padding):
            weight = tile_weight(y1 - y0, x1 - x0, 2 * padding if ramp is None else ramp)[..., None]
            acc[:, y0:y1, x0:x1] += denoise(video[:, y0:y1, x0:x1]) * weight
            total[y0:y1, x0:x1] += weight
    return acc / total


def run_tiled_stage(pipe, video: np.ndarray, prompt: str, negative_prompt: str, generator, cfg, run) -> tuple:
    """Tiled VCD on one video: upscale, then denoise tiles at low strength and blend them seam-free."""
    big = upscale(video, cfg.scale, cfg.upscaler, pipe.device)

    def denoise(tile: np.ndarray) -> np.ndarray:
        return pipe.video_to_video(
            tile, prompt, negative_prompt, generator, gamma=_or(cfg.gamma, run["gamma"]), strength=cfg.strength,
            steps=_or(cfg.steps, run["steps"]), guidance_scale=_or(cfg.guidance_scale, run["guidance_scale"]),
            progress=False,
        )

    out = blend_tiles(big, cfg.tile, cfg.padding, denoise)
    rows, cols = (len(tile_windows(n, cfg.tile, cfg.padding)) for n in big.shape[1:3])
    tiles = rows * cols
    return out, {"tiles": tiles}


def prepare_input_video(path: str, frames: int, height: int, width: int) -> np.ndarray:
    """The first `frames` frames of an input video, resized to cover height × width and centre-cropped."""
    video = read_video(path)
    if len(video) < frames:
        raise ConfigError(f"input_video: {path} has {len(video)} frames; the config asks for {frames} "
                          "(lower `frames`)")
    video = video[:frames]
    h, w = video.shape[1:3]
    scale = max(height / h, width / w)
    rh, rw = max(height, round(h * scale)), max(width, round(w * scale))
    video = resize_video(video, rh, rw)
    top, left = (rh - height) // 2, (rw - width) // 2
    return video[:, top:top + height, left:left + width]


def _or(value, default):
    return default if value is None else value
