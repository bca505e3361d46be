"""Face alignment as insightface does it (`insightface.utils.face_align.norm_crop`): the 5 detected landmarks
(eyes, nose tip, mouth corners) mapped onto ArcFace's 112-px template by the least-squares similarity transform
(Umeyama), the image warped with OpenCV. ArcFace embeds the 112-px crop; ConsisID crops at 224 px for
CurricularFace and FID-face."""

import numpy as np

from magicme.errors import ConfigError

# insightface's `arcface_dst`: left eye, right eye, nose tip, left and right mouth corner in a 112 × 112 crop
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
                             [70.7299, 92.2041]])


def import_cv2(purpose: str):
    try:
        import cv2
    except ImportError as err:
        raise ConfigError(f"{purpose}: OpenCV is not installed; pip install opencv-python-headless (or "
                          f"`pip install -e .[eval]`)") from err
    return cv2


def template(size: int) -> np.ndarray:
    """The template for a `size`-px crop (a multiple of 112 scales it, as norm_crop does)."""
    if size % 112:
        raise ValueError(f"crop size {size} is not a multiple of 112")
    return ARCFACE_TEMPLATE * (size / 112)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2 × 3 rotation + uniform scale + translation that maps `src` points closest to `dst` (least squares,
    Umeyama 1991: what skimage's SimilarityTransform.estimate computes)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mean_src, mean_dst = src.mean(0), dst.mean(0)
    a, b = src - mean_src, dst - mean_dst
    cov = b.T @ a / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(cov) < 0:
        d[1] = -1
    rotation = u @ np.diag(d) @ vt
    scale = (s * d).sum() / a.var(0).sum()
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = mean_dst - scale * rotation @ mean_src
    return matrix


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return np.asarray(points, np.float64) @ matrix[:, :2].T + matrix[:, 2]


def norm_crop(image: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """The aligned `size` × `size` face of a uint8 (H, W, 3) image (black outside the image, as norm_crop)."""
    cv2 = import_cv2("face alignment")
    matrix = similarity_transform(landmarks, template(size))
    return cv2.warpAffine(image, matrix, (size, size), borderValue=0.0)


def aligned_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """The 5 landmarks in the 112-px template frame: position, in-plane rotation and size removed, what is left is
    head pose (yaw, pitch) and expression — what the copy-paste score compares."""
    return apply(similarity_transform(landmarks, ARCFACE_TEMPLATE), landmarks)
