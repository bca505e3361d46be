"""How well an output clip keeps the pose or depth of its input clip (scripts/control_check.py): the measures, pure
numpy, applied to keypoints / depth maps that the control preprocessors' models find in both clips.

- pose: for the keypoints seen in an input frame (score above the threshold), the distance to the same keypoint in
  the output frame, divided by the size of the input person (the larger side of its keypoints' bounding box);
  reported as the mean of these distances and PCK@α, the share within α (0.1: a tenth of the person) — a keypoint
  the output does not show counts as missed;
- depth: the Pearson correlation of the input's and the output's relative depth per frame, averaged: invariant to
  the scale and shift that relative depth is only known up to.
"""

import numpy as np

from magicme.control.pose import THRESHOLD


def pose_agreement(reference: np.ndarray, reference_scores: np.ndarray, candidate: np.ndarray,
                   candidate_scores: np.ndarray, alpha: float = 0.1,
                   threshold: float = THRESHOLD) -> dict[str, float]:
    """Mean normalised keypoint distance and PCK@alpha of (F, K, 2) candidate keypoints against reference ones."""
    seen = reference_scores > threshold
    boxes = []
    for points, visible in zip(reference, seen):
        shown = points[visible]
        boxes.append(float(np.ptp(shown, axis=0).max()) if len(shown) > 1 else np.nan)
    size = np.array(boxes)[:, None]
    distance = np.linalg.norm(candidate - reference, axis=2) / size
    distance = np.where(candidate_scores > threshold, distance, np.inf)  # not shown in the output: missed
    counted = seen & np.isfinite(size) & (size > 0)
    if not counted.any():
        return {"keypoints": 0, "mean_distance": float("nan"), f"pck@{alpha:g}": float("nan")}
    d = distance[counted]
    finite = d[np.isfinite(d)]
    return {"keypoints": int(counted.sum()),
            "mean_distance": float(finite.mean()) if finite.size else float("nan"),
            f"pck@{alpha:g}": float((d <= alpha).mean())}


def depth_agreement(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Mean per-frame Pearson correlation of (F, H, W) depth maps (1 = the same up to scale and shift)."""
    r = []
    for a, b in zip(reference, candidate):
        a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
        norm = np.linalg.norm(a) * np.linalg.norm(b)
        r.append(float(a @ b / norm) if norm > 0 else float("nan"))
    return {"depth_correlation": float(np.nanmean(r)) if not np.isnan(r).all() else float("nan")}
