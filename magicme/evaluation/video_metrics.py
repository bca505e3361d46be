"""Per-video metrics beyond likeness: motion amplitude and smoothness (OpenCV Farneback optical flow), identity
drift over a long video, copy-paste (how closely a generated face repeats the reference photo's pose and
expression) and the Fréchet distance FID-face is built on. Pure functions over frames, embeddings and landmarks;
docs/evaluation.md gives each recipe and its source."""

import numpy as np

from magicme.evaluation.alignment import aligned_landmarks, import_cv2
from magicme.video_io import to_uint8

# OpenS2V-Eval's get_motion_amplitude.py: Farneback parameters and the 16-px-wide flow maps it averages
FARNEBACK = {"pyr_scale": 0.5, "levels": 3, "winsize": 15, "iterations": 3, "poly_n": 5, "poly_sigma": 1.2,
             "flags": 0}
FLOW_WIDTH = 16


def optical_flow(frames: np.ndarray) -> np.ndarray:
    """(F − 1, H, W, 2) Farneback flow between consecutive frames of a (F, H, W, 3) video. Grey as OpenS2V
    makes it: `COLOR_BGR2GRAY` on RGB frames (its channel weights swapped; kept so the numbers compare)."""
    cv2 = import_cv2("motion metrics")
    grey = [cv2.cvtColor(np.ascontiguousarray(to_uint8(f)), cv2.COLOR_BGR2GRAY) for f in frames]
    flows = [cv2.calcOpticalFlowFarneback(a, b, None, **FARNEBACK) for a, b in zip(grey, grey[1:])]
    return np.stack(flows) if flows else np.zeros((0, *frames.shape[1:3], 2), np.float32)


def motion_amplitude(flow: np.ndarray) -> float:
    """OpenS2V's `motion_fb`: each flow map shrunk to 16 px wide (area), their mean over frame pairs, then the
    absolute mean of every value (x and y components alike, signed); NaN for a single frame."""
    if len(flow) == 0:
        return float("nan")
    cv2 = import_cv2("motion metrics")
    h, w = flow.shape[1:3]
    small = [cv2.resize(f, (FLOW_WIDTH, int(h * FLOW_WIDTH / w)), interpolation=cv2.INTER_AREA) for f in flow]
    return float(abs(np.mean(np.mean(small, axis=0))))


def motion_smoothness(flow: np.ndarray) -> float:
    """Mean per-pixel change of the flow from one frame pair to the next (px / frame², lower = smoother): 0 for
    a steady pan, large for jitter. NaN under three frames."""
    if len(flow) < 2:
        return float("nan")
    return float(np.linalg.norm(np.diff(flow, axis=0), axis=-1).mean())


def window_similarity(frames: list[np.ndarray | None], references: np.ndarray) -> float:
    """Mean cosine of the window's face embeddings to the references' (NaN without a face)."""
    found = [f / np.linalg.norm(f) for f in frames if f is not None]
    if not found or len(references) == 0:
        return float("nan")
    refs = references / np.linalg.norm(references, axis=1, keepdims=True)
    return float((np.stack(found) @ refs.T).mean())


def identity_drift(frames: list[np.ndarray | None], references: np.ndarray, window: float = 0.25) -> float:
    """Identity similarity of the first `window` share of the frames minus that of the last: > 0 when the
    person fades away from the reference over the video. NaN when either window has no face."""
    count = max(1, int(round(len(frames) * window)))
    return window_similarity(frames[:count], references) - window_similarity(frames[-count:], references)


def copy_paste(frame_landmarks: list[np.ndarray | None], reference_landmarks: list[np.ndarray]) -> float:
    """Mean over frames with a face of the RMS distance (in the 112-px ArcFace template) between its aligned 5
    landmarks and the closest reference photo's: 0 = the reference's very pose and expression pasted in; small
    values with high FaceSim mean likeness bought by copying. NaN without faces."""
    refs = [aligned_landmarks(r) for r in reference_landmarks]
    found = [aligned_landmarks(f) for f in frame_landmarks if f is not None]
    if not found or not refs:
        return float("nan")
    return float(np.mean([min(np.sqrt(((f - r) ** 2).sum(-1).mean()) for r in refs) for f in found]))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (rows): |μa − μb|² + tr(Σa + Σb −
    2 (Σa Σb)^½). A set of one row has zero covariance, as in ConsisID (which repeats a lone row)."""
    from scipy import linalg

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    cov_a = np.cov(a, rowvar=False) if len(a) > 1 else np.zeros((a.shape[1], a.shape[1]))
    cov_b = np.cov(b, rowvar=False) if len(b) > 1 else np.zeros((b.shape[1], b.shape[1]))
    root = linalg.sqrtm(cov_a @ cov_b).real if cov_a.any() and cov_b.any() else np.zeros_like(cov_a)
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))
