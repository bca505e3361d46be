"""Pose maps of a clip: VitPose keypoints (transformers `VitPoseForPoseEstimation`, COCO's 17 keypoints), drawn as
the OpenPose skeleton that ControlNet openpose was trained on.

VitPose is a top-down estimator: it finds the keypoints of the person in a given box. The box is the whole frame:
ID-editing clips show one person filling much of the frame (a talking head, a half body), the processor widens the
box by 1.25 and fits it to the model's 3:4 input, and a person detector would be one more model to download and to
fail. A small person in a wide shot, or several people, need a detector's boxes, which this preprocessor does not
have (docs/control.md).

OpenPose's 18 body points are COCO's 17 reordered plus a neck, the midpoint of the shoulders when both are seen.
`draw_pose` draws its 17 limbs as ellipses (half-width 4 px) in 0.6 × the limb's colour, then its 18 points as discs
(radius 4 px) in their colour, on black, in OpenPose's order and colours.
"""

from pathlib import Path

import numpy as np
import torch
from transformers import AutoImageProcessor, VitPoseForPoseEstimation

from magicme.video_io import to_uint8

NECK = -1
OPENPOSE_FROM_COCO = (0, NECK, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)
COCO_SHOULDERS = (5, 6)
LIMBS = ((1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
         (1, 0), (0, 14), (14, 16), (0, 15), (15, 17))
COLOURS = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
           (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
           (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85))
LIMB_SHADE = 0.6
HALF_WIDTH = 4.0
RADIUS = 4.0
THRESHOLD = 0.3  # keypoints scored at or below this are not drawn (as OpenPose's renderer)


def openpose_points(coco: np.ndarray, scores: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    """(18, 2) OpenPose body points (x, y) from COCO's (17, 2) and their (17,) scores; NaN where not seen."""
    seen = np.where((scores > threshold)[:, None], coco.astype(np.float64), np.nan)
    neck = seen[list(COCO_SHOULDERS)].mean(axis=0)  # NaN unless both shoulders are seen
    return np.stack([neck if i == NECK else seen[i] for i in OPENPOSE_FROM_COCO])


def draw_pose(points: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W, 3) uint8 OpenPose skeleton of (18, 2) points (NaN = not seen): limbs, then points on top."""
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    for (a, b), colour in zip(LIMBS, COLOURS):
        if np.isnan(points[[a, b]]).any():
            continue
        middle, step = (points[a] + points[b]) / 2, points[b] - points[a]
        half_length = np.hypot(*step) / 2
        if half_length == 0:
            continue
        along = ((x - middle[0]) * step[0] + (y - middle[1]) * step[1]) / (2 * half_length)
        across = ((y - middle[1]) * step[0] - (x - middle[0]) * step[1]) / (2 * half_length)
        inside = (along / half_length) ** 2 + (across / HALF_WIDTH) ** 2 <= 1
        canvas[inside] = [int(c * LIMB_SHADE) for c in colour]
    for point, colour in zip(points, COLOURS):
        if not np.isnan(point).any():
            canvas[(x - point[0]) ** 2 + (y - point[1]) ** 2 <= RADIUS ** 2] = colour
    return canvas


@torch.no_grad()
def estimate_keypoints(video: np.ndarray, folder: Path | str, device="cpu") -> tuple[np.ndarray, np.ndarray]:
    """COCO keypoints (F, 17, 2) in pixels and their scores (F, 17) of a [0, 1] (F, H, W, 3) video, one person per
    frame in a whole-frame box."""
    processor = AutoImageProcessor.from_pretrained(str(folder), local_files_only=True, backend="pil")
    model = VitPoseForPoseEstimation.from_pretrained(str(folder), local_files_only=True).to(device).eval()
    frames = to_uint8(video)
    height, width = video.shape[1:3]
    boxes = [[[0.0, 0.0, float(width), float(height)]] for _ in frames]  # COCO (x, y, w, h)
    inputs = processor(images=list(frames), boxes=boxes, return_tensors="pt").to(device)
    outputs = model(pixel_values=inputs["pixel_values"])
    people = processor.post_process_pose_estimation(outputs, boxes=boxes)
    keypoints = np.stack([p[0]["keypoints"].float().numpy() for p in people])
    scores = np.stack([p[0]["scores"].float().numpy() for p in people])
    return keypoints, scores


def pose_video(video: np.ndarray, folder: Path | str, device="cpu") -> np.ndarray:
    """A ControlNet openpose input: float32 (F, H, W, 3) in [0, 1] of a [0, 1] RGB video."""
    keypoints, scores = estimate_keypoints(video, folder, device)
    height, width = video.shape[1:3]
    maps = [draw_pose(openpose_points(k, s), height, width) for k, s in zip(keypoints, scores)]
    return np.stack(maps).astype(np.float32) / 255.0
