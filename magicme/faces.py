"""Finding faces in frames: one module for Face VCD (where to crop) and evaluation (whose face it is).

Two detectors: dlib's HOG frontal-face detector (offline, from the `dlib-bin` package) and CLIPSeg
prompt-to-segmentation ("face" probabilities thresholded into connected regions: the model training's masks use).
Both return, per frame, boxes `(x0, y0, x1, y1)` in pixels. Heavy imports happen when a detector is built.
"""

import numpy as np

from magicme.errors import ConfigError
from magicme.vcd.geometry import Box
from magicme.video_io import to_uint8


def import_dlib(purpose: str):
    """dlib, or a `ConfigError` saying how to install it."""
    try:
        import dlib
    except ImportError as err:
        raise ConfigError(f"{purpose}: dlib is not installed; pip install dlib-bin (or `pip install -e .[faces]`)") \
            from err
    return dlib


def to_uint8_contiguous(image: np.ndarray) -> np.ndarray:
    """dlib reads the buffer as C-ordered uint8 rows: a strided view would silently give wrong detections."""
    return np.ascontiguousarray(to_uint8(image))


class DlibFaces:
    """dlib's HOG frontal-face detector; `upsample` 1 finds faces down to ~40 px."""

    def __init__(self, upsample: int = 1, min_face: int = 0, purpose: str = "face.detector"):
        self.detector = import_dlib(purpose).get_frontal_face_detector()
        self.upsample, self.min_face = upsample, min_face

    def detect(self, pixels: np.ndarray) -> list[tuple[object, float]]:
        """(dlib rectangle, confidence) of every face in a uint8 (H, W, 3) C-ordered image."""
        rects, scores, _ = self.detector.run(pixels, self.upsample, 0.0)
        return list(zip(rects, scores))

    def boxes(self, video: np.ndarray) -> list[list[Box]]:
        h, w = video.shape[1:3]
        found = []
        for frame in video:
            rects = [r for r, _ in self.detect(to_uint8_contiguous(frame))]
            boxes = [(max(0, r.left()), max(0, r.top()), min(w, r.right()), min(h, r.bottom())) for r in rects]
            found.append([b for b in boxes if min(b[2] - b[0], b[3] - b[1]) >= self.min_face])
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


class ClipSegFaces:
    """CLIPSeg probabilities for `prompt` ("face"), thresholded into one box per connected region."""

    def __init__(self, model_path: str, prompt: str, threshold: float, min_face: int, device="cpu"):
        from magicme.segmentation import ClipSegSegmenter

        self.segmenter = ClipSegSegmenter(model_path, device=device)
        self.prompt, self.threshold, self.min_face = prompt, threshold, min_face

    def boxes(self, video: np.ndarray) -> list[list[Box]]:
        probs = self.segmenter.probabilities(video, self.prompt)
        return boxes_from_probabilities(probs, self.threshold, self.min_face)
