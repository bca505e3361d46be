"""Pose maps of a clip: VitPose keypoints (transformers `VitPoseForPoseEstimation`, COCO's 17 keypoints), drawn as
the OpenPose skeleton that ControlNet openpose was trained on.

VitPose is a top-down estimator: it finds the keypoints of the person in a given box. By default the box is the
whole frame: ID-editing clips show one person filling much of the frame (a talking head, a half body), and the
processor widens the box by 1.25 and fits it to the model's 3:4 input. For a smaller person, `person_boxes` gives
each frame the bounding box of a person mask (CLIPSeg's "person" segmentation, the model the project already uses
for masks); a frame where the mask is empty keeps the whole frame (docs/control.md).

OpenPose's 18 body points are COCO's 17 reordered plus a neck, the midpoint of the shoulders when both are seen.
`draw_pose` draws its 17 limbs as ellipses (half-width 4 px) in 0.6 × the limb's colour, then its 18 points as discs
(radius 4 px) in their colour, on black, in OpenPose's order and colours.
"""

from pathlib import Path

import numpy as np
import torch
from transformers import AutoImageProcessor, VitPoseForPoseEstimation

from magicme.segmentation import ClipSegSegmenter
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
PERSON_PROMPT, PERSON_THRESHOLD = "person", 0.5  # CLIPSeg's person mask, for `person` boxes


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


def person_boxes(mask: np.ndarray) -> list[list[float]]:
    """Per frame of an (F, H, W) bool person mask, the COCO box (x, y, width, height) around its pixels (pixel
    edges, so one pixel is a 1 × 1 box); the whole frame where the mask is empty."""
    height, width = mask.shape[1:]
    boxes = []
    for frame in mask:
        rows, cols = np.flatnonzero(frame.any(axis=1)), np.flatnonzero(frame.any(axis=0))
        if rows.size == 0:
            boxes.append([0.0, 0.0, float(width), float(height)])
        else:
            boxes.append([float(cols[0]), float(rows[0]), float(cols[-1] + 1 - cols[0]),
                          float(rows[-1] + 1 - rows[0])])
    return boxes


@torch.no_grad()
def estimate_keypoints(video: np.ndarray, folder: Path | str, device="cpu",
                       boxes: list[list[float]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """COCO keypoints (F, 17, 2) in pixels and their scores (F, 17) of a [0, 1] (F, H, W, 3) video, one person per
    frame in its COCO box (x, y, width, height); default the whole frame."""
    processor = AutoImageProcessor.from_pretrained(str(folder), local_files_only=True, backend="pil")
    model = VitPoseForPoseEstimation.from_pretrained(str(folder), local_files_only=True).to(device).eval()
    frames = to_uint8(video)
    height, width = video.shape[1:3]
    boxes = [[box] for box in (boxes or person_boxes(np.zeros((len(frames), height, width), dtype=bool)))]
    inputs = processor(images=list(frames), boxes=boxes, return_tensors="pt").to(device)
    outputs = model(pixel_values=inputs["pixel_values"])
    people = processor.post_process_pose_estimation(outputs, boxes=boxes)
    keypoints = np.stack([p[0]["keypoints"].float().numpy() for p in people])
    scores = np.stack([p[0]["scores"].float().numpy() for p in people])
    return keypoints, scores


def segmented_boxes(video: np.ndarray, clipseg: Path | str, device="cpu") -> list[list[float]]:
    """Each frame's person box from CLIPSeg's "person" probabilities above PERSON_THRESHOLD."""
    return person_boxes(ClipSegSegmenter(clipseg, device).probabilities(video, PERSON_PROMPT) > PERSON_THRESHOLD)


def pose_video(video: np.ndarray, folder: Path | str, device="cpu", person: Path | str | None = None) -> np.ndarray:
    """A ControlNet openpose input: float32 (F, H, W, 3) in [0, 1] of a [0, 1] RGB video; `person` a CLIPSeg folder
    to box the person in each frame (default: the whole frame)."""
    boxes = segmented_boxes(video, person, device) if person is not None else None
    keypoints, scores = estimate_keypoints(video, folder, device, boxes)
    height, width = video.shape[1:3]
    maps = [draw_pose(openpose_points(k, s), height, width) for k, s in zip(keypoints, scores)]
    return np.stack(maps).astype(np.float32) / 255.0
