"""What the miniature experiments measure on generated videos: the classifier's reading of each video (shape, colour,
background) and frame-to-frame consistency (object-mask IoU, colour drift, pixel change).

Videos follow the project's convention: float32 (frames, H, W, 3) in [0, 1].
"""

from dataclasses import dataclass

import numpy as np
import torch

from magicme.miniature.models import Classifier
from magicme.miniature.world import World


@dataclass(frozen=True)
class Reading:
    shape: str
    colour: str
    background: str


def read_video(classifier: Classifier, world: World, video: np.ndarray) -> Reading:
    """The classifier's answer for a whole video: its logits averaged over the frames."""
    with torch.no_grad():
        logits = classifier(torch.from_numpy(video).permute(0, 3, 1, 2).float())
    shape, colour, background = (int(x.mean(0).argmax()) for x in logits)
    return Reading(world.shapes[shape], world.colours[colour], world.backgrounds[background])


def object_masks(video: np.ndarray, threshold: float = 0.25) -> np.ndarray:
    """(F, H, W) bool: pixels whose colour is far from the frame's background, the median of its border pixels."""
    border = np.concatenate([video[:, 0], video[:, -1], video[:, :, 0], video[:, :, -1]], axis=1)  # (F, 4W, 3)
    background = np.median(border, axis=1)[:, None, None]
    return np.linalg.norm(video - background, axis=-1) > threshold


def consistency(video: np.ndarray) -> dict[str, float]:
    """Mean over consecutive frame pairs: object-mask IoU (1 = the object keeps its silhouette), colour drift
    (distance between the object's mean colours) and mean absolute pixel change."""
    masks = object_masks(video)
    ious, drifts = [], []
    for a, b, fa, fb in zip(masks, masks[1:], video, video[1:]):
        union = (a | b).sum()
        ious.append((a & b).sum() / union if union else 1.0)
        if a.any() and b.any():
            drifts.append(float(np.linalg.norm(fa[a].mean(0) - fb[b].mean(0))))
    return {"iou": float(np.mean(ious)), "colour_drift": float(np.mean(drifts)) if drifts else float("nan"),
            "pixel_change": float(np.abs(np.diff(video, axis=0)).mean())}
