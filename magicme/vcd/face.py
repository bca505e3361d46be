"""Face VCD: find each face, denoise a larger square crop around it as its own video, paste the face back.

Per face track (boxes linked across frames) one crop box is used for every frame: the union of the track's boxes,
grown by `crop_factor` for context, made square and fitted in the frame. The crop video is resized to `size`,
partially noised with the 3D prior and denoised with the ID prompt (`strength` 0.8) by the same pipeline, resized
back, and pasted inside the face region only (the union of the track's boxes) with a `feather`-px linear blend.
"""

import logging

import numpy as np
import torch

from magicme.vcd.boxes import clip_box, crop_box, link_tracks, union
from magicme.vcd.config import stage_settings, validate_face_config
from magicme.vcd.detect import make_detector
from magicme.vcd.paste import crop, feather_mask, paste, resize_video

log = logging.getLogger("magicme")


def run_face_stage(pipe, video: np.ndarray, prompt: str, negative_prompt: str, generator: torch.Generator, cfg,
                   *, steps: int | None = None, guidance_scale: float | None = None, gamma: float | None = None,
                   detector=None, progress: bool = False) -> tuple[np.ndarray, dict]:
    """Refine every detected face of `video`; returns the video (same size) and what was done.

    `cfg` is the `face:` section; `steps`, `guidance_scale`, `gamma` are the run's values, used where the section
    leaves them null. `detector` overrides the configured one (a callable video → boxes per frame). No face → the
    input comes back unchanged with `info["passed_through"] = True` and a warning.
    """
    section = validate_face_config(cfg)
    settings = stage_settings(section, "face", steps, guidance_scale, gamma)
    detector = detector or make_detector(section, str(pipe.device))
    _, height, width, _ = video.shape
    tracks = link_tracks(detector(video), section.track_iou)
    info = {"detector": section.detector, "faces": len(tracks), "passed_through": not tracks, "crops": [],
            "regions": []}
    if not tracks:
        log.warning("face stage: no face found in any frame; the video passes through unchanged")
        return video.copy(), info
    out = video.copy()
    for track in tracks:
        box = crop_box(list(track.values()), section.crop_factor, width, height)
        face = clip_box(union(list(track.values())), width, height)
        region = (max(face[0], box[0]), max(face[1], box[1]), min(face[2], box[2]), min(face[3], box[3]))
        side = box[2] - box[0]
        crop_video = resize_video(crop(out, box), section.size, section.size)
        denoised = pipe.video_to_video(crop_video, prompt, negative_prompt, generator, strength=section.strength,
                                       progress=progress, **settings)
        mask = feather_mask(height, width, region, section.feather)
        out = paste(out, resize_video(denoised, side, side), box, mask)
        info["crops"].append(list(box))
        info["regions"].append(list(region))
    return out, info
