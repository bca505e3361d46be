"""Depth maps of a clip with a transformers depth-estimation model (Depth Anything, DPT/MiDaS), loaded offline from a
local folder (`config.json`, weights, `preprocessor_config.json`: the `control` download group's
models/control/depth-anything-v2-small).

These models predict relative inverse depth (near = large), which is what ControlNet depth was trained on (MiDaS
maps, near = white). Each frame goes through the model's own image processor (PIL backend: no torchvision), its
prediction is resized back to the frame by the processor's `post_process_depth_estimation`, and the clip is scaled
to [0, 1] by its overall minimum and maximum — one scale for the whole clip, so the depth of a still scene does not
flicker from frame to frame as per-frame normalisation would make it.
"""

from pathlib import Path

import numpy as np
import torch
from transformers import AutoImageProcessor, AutoModelForDepthEstimation

from magicme.video_io import to_uint8

BATCH = 8


def normalise(depth: np.ndarray) -> np.ndarray:
    """(F, H, W) → [0, 1] by the clip's minimum and maximum; a constant clip → 0."""
    low, high = float(depth.min()), float(depth.max())
    if high <= low:
        return np.zeros_like(depth, dtype=np.float32)
    return ((depth - low) / (high - low)).astype(np.float32)


@torch.no_grad()
def estimate_depth(video: np.ndarray, folder: Path | str, device="cpu") -> np.ndarray:
    """(F, H, W) float32 raw relative inverse depth of a [0, 1] (F, H, W, 3) video, at the video's size."""
    processor = AutoImageProcessor.from_pretrained(str(folder), local_files_only=True, backend="pil")
    model = AutoModelForDepthEstimation.from_pretrained(str(folder), local_files_only=True).to(device).eval()
    frames, size = to_uint8(video), video.shape[1:3]
    depth = []
    for start in range(0, len(frames), BATCH):
        batch = list(frames[start:start + BATCH])
        inputs = processor(images=batch, return_tensors="pt").to(device)
        outputs = model(pixel_values=inputs["pixel_values"])
        maps = processor.post_process_depth_estimation(outputs, target_sizes=[size] * len(batch))
        depth += [m["predicted_depth"].float().cpu().numpy() for m in maps]
    return np.stack(depth)


def depth_video(video: np.ndarray, folder: Path | str, device="cpu") -> np.ndarray:
    """A ControlNet depth input: float32 (F, H, W, 3) grey in [0, 1] (near = white) of a [0, 1] RGB video."""
    depth = normalise(estimate_depth(video, folder, device))
    return np.repeat(depth[..., None], 3, axis=3)
