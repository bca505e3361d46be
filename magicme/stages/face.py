"""Face VCD: find the face in every frame, crop one box (`crop_factor` × the face) for all frames, scale the crop
so its shorter side is `size` (its longer at most `max_size`), re-noise it with the 3D prior at `strength` and
denoise it with the sample's ID prompt, then paste it back over the face only.

`crop_shape: graph` (the default) is the Impact Pack's geometry, as the Magic-Me graph ran it: the crop is the face
box × `crop_factor` in width and height separately, and it is never shrunk (a crop whose shorter side is already
`size` or more is denoised at its own size); each side is rounded down to the latent grid (magicme/vcd/geometry.py).
`crop_shape: square`: a square of `crop_factor` × the face's longer side, always denoised at `size` × `size`.

`mask: segment` (the Magic-Me graph's detailer): only the face's segmentation is regenerated — the crop's latents
outside it are held to the crop's own at every step — and the result is pasted through that mask blurred by
`feather` px. `mask: box`: the whole crop is regenerated and pasted through the face box with a linear
`feather`-px edge.
"""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from magicme.errors import ConfigError
from magicme.inspector import hf_model_present
from magicme.stages import Stage, denoise_problems, installed, or_default, own_scheduler, register_stage
from magicme.vcd.geometry import (Box, blurred_mask, crop_box, feather_mask, graph_crop_box, graph_denoise_size,
                                  link_tracks, union_box)

log = logging.getLogger("magicme")
DETECTORS = ("clipseg", "dlib")
MASKS = ("segment", "box")
CROP_SHAPES = ("graph", "square")


@dataclass
class FaceConfig:
    detector: str = "clipseg"  # clipseg (prompt-to-segmentation, the model training uses) or dlib (HOG, offline)
    clipseg_model: str = "models/clipseg"
    prompt: str = "face"  # CLIPSeg prompt
    threshold: float = 0.5  # CLIPSeg probability that counts as face
    min_face: int = 10  # ignore detections smaller than this (px); the ComfyUI graph's drop_size
    crop_factor: float = 3.0  # crop box = crop_factor × the face box (ComfyUI graph: 3)
    size: int = 512  # the Impact Pack's guide_size: the crop's shorter side is scaled up to it (square: size × size)
    max_size: int = 512  # the Impact Pack's max_size: the scaled crop's longer side is at most this (graph shape)
    crop_shape: str = "graph"  # graph: the Impact Pack's crop and scaling; square: a square crop at size × size
    strength: float = 0.8  # denoise 0.8
    mask: str = "segment"  # segment: regenerate and paste only the face's segmentation (graph); box: the face box
    feather: int = 5  # px of the paste mask's soft edge (segment: a Gaussian blur, as the graph's SEGSPaste)
    steps: Optional[int] = None  # steps actually run (of a schedule of steps / strength); None = the run's steps
    guidance_scale: Optional[float] = None  # None = the run's
    gamma: Optional[float] = None  # None = the sample's γ
    scheduler: Optional[Any] = None  # {name, kwargs} as model.scheduler; None = the model's (graph: euler)


@register_stage
class FaceStage(Stage):
    name = "face"
    Config = FaceConfig

    @classmethod
    def check(cls, cfg):
        face, problems = cfg.face, []
        if face.detector not in DETECTORS:
            problems.append(f"face.detector: {face.detector!r} is not one of {', '.join(DETECTORS)}")
        elif face.detector == "clipseg" and not hf_model_present(Path(face.clipseg_model)):
            problems.append(f"face.clipseg_model: no CLIPSeg model (config.json + weights) in {face.clipseg_model}; "
                            "run download_checkpoint.sh --only clipseg, or use face.detector=dlib")
        elif face.detector == "dlib" and not installed("dlib"):
            problems.append("face.detector: dlib is not installed; pip install dlib-bin, or use face.detector=clipseg")
        checks = [
            (0.0 < face.threshold < 1.0, f"face.threshold: {face.threshold} not in (0, 1)"),
            (face.min_face >= 0, f"face.min_face: {face.min_face} must be >= 0"),
            (face.crop_factor >= 1.0, f"face.crop_factor: {face.crop_factor} must be >= 1"),
            (face.size >= 8 and face.size % 8 == 0, f"face.size: {face.size} must be a positive multiple of 8"),
            (face.max_size >= 8, f"face.max_size: {face.max_size} must be >= 8"),
            (face.crop_shape != "graph" or face.max_size >= face.size,
             f"face.max_size: {face.max_size} is less than face.size {face.size}, so no crop could reach its guide "
             f"size; set face.max_size >= {face.size}"),
            (face.crop_shape in CROP_SHAPES, f"face.crop_shape: {face.crop_shape!r} is not one of "
                                             f"{', '.join(CROP_SHAPES)}"),
            (face.feather >= 0, f"face.feather: {face.feather} must be >= 0"),
            (face.mask in MASKS, f"face.mask: {face.mask!r} is not one of {', '.join(MASKS)}"),
        ]
        return problems + [message for ok, message in checks if not ok] + denoise_problems("face", face, cfg.steps)

    def setup(self, pipe) -> None:
        """The face detector and the stage's own scheduler, made once per run."""
        from magicme.faces import ClipSegFaces, DlibFaces

        s = self.settings
        if s.detector == "dlib":
            self.detector = DlibFaces(upsample=1, min_face=s.min_face, landmarks=s.mask == "segment")
        else:
            self.detector = ClipSegFaces(s.clipseg_model, s.prompt, s.threshold, s.min_face, device=pipe.device)
        self.scheduler = own_scheduler(pipe, "face.scheduler", s.scheduler)
        order = (self.scheduler or pipe.v2v.scheduler).order
        if s.mask == "segment" and order != 1:
            raise ConfigError(f"face.mask: segment holds the latents outside the face after every step, which needs a "
                              f"first-order scheduler (this one has order {order}); set face.scheduler (e.g. euler) "
                              "or face.mask=box")

    def __call__(self, pipe, video, sample, generator):
        s = self.settings
        boxes, masks = self.detector.segment(video) if s.mask == "segment" else (self.detector.boxes(video), None)
        tracks = link_tracks(boxes)
        if not tracks:
            log.warning("face stage: no face found; the video passes through unchanged")
            return video.copy(), {"faces": 0, "passed_through": True}
        if s.strength == 0:
            # nothing to denoise: skip the crop's resampling round trip too, so the video comes back unchanged
            return video.copy(), {"faces": len(tracks), "passed_through": True}

        numbers = iter(range(1, len(tracks) + 1))

        def denoise(crop: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
            return pipe.video_to_video(
                crop, sample.prompt, sample.negative_prompt, generator, gamma=or_default(s.gamma, sample.gamma),
                strength=s.strength, steps=or_default(s.steps, self.run.steps), mask=mask, scheduler=self.scheduler,
                guidance_scale=or_default(s.guidance_scale, self.run.guidance_scale), progress=self.progress,
                desc=f"face {next(numbers)}/{len(tracks)}",
            )

        refined, sizes = refine_faces(video, tracks, denoise, s.crop_factor, s.size, s.feather, pipe.device, masks,
                                      max_size=s.max_size, crop_shape=s.crop_shape, grid=pipe.vae_scale_factor)
        return refined, {"faces": len(tracks), "passed_through": False,
                         "boxes": [list(union_box(t)) for t in tracks], "denoised_at": sizes}


def refine_faces(video: np.ndarray, tracks: list[list[Box]], denoise, crop_factor: float, size: int,
                 feather: int, device="cpu", masks: np.ndarray | None = None, max_size: int = 512,
                 crop_shape: str = "graph", grid: int = 8) -> tuple[np.ndarray, list[list[int]]]:
    """Crop each track's box from all frames, `denoise(crop, mask)` it at the size `crop_shape` gives (graph: the
    Impact Pack's guide size `size` and cap `max_size`, on a `grid`-px latent grid; square: size × size), paste it
    back over the face. Returns the video and each crop's denoised [width, height].

    With `masks` ((F, H, W) face segmentations), the track's mask is their union over frames inside its face box
    (the graph's "combined mask"): `denoise` regenerates only that region and the paste goes through it blurred
    by `feather` px. Without, the whole crop is regenerated and pasted through the face box with a linear edge.
    """
    from magicme.vcd.resize import resize_video

    out, sizes = video.copy(), []
    h, w = video.shape[1:3]
    for track in tracks:
        face = union_box(track)
        if crop_shape == "graph":
            x0, y0, x1, y1 = graph_crop_box(face, crop_factor, h, w)
            width, height = graph_denoise_size(x1 - x0, y1 - y0, size, max_size, grid)
        else:
            x0, y0, x1, y1 = crop_box(face, crop_factor, h, w)
            width = height = size
        sizes.append([width, height])
        local_face = (face[0] - x0, face[1] - y0, face[2] - x0, face[3] - y0)
        if masks is None:
            region, paste = None, feather_mask(y1 - y0, x1 - x0, local_face, feather)
        else:
            region = np.zeros((y1 - y0, x1 - x0), dtype=np.float32)
            region[local_face[1]:local_face[3], local_face[0]:local_face[2]] = \
                masks[:, face[1]:face[3], face[0]:face[2]].any(axis=0)
            paste = blurred_mask(region, feather)
        crop = resize_video(out[:, y0:y1, x0:x1], height, width, device)
        refined = resize_video(denoise(crop, region), y1 - y0, x1 - x0, device)
        weight = paste[None, ..., None]
        under = out[:, y0:y1, x0:x1]
        # exactly the input where the weight is 0 and exactly the refined crop where it is 1 (no float round-off)
        out[:, y0:y1, x0:x1] = np.where(weight == 1.0, refined, under + weight * (refined - under))
    return out, sizes
