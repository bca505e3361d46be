"""Face detectors for Face VCD: per frame, a list of face boxes `(x0, y0, x1, y1)`.

- `ClipSegDetector`: the paper's "prompt-to-segmentation sub-module" — CLIPSeg probabilities for a text prompt
  ("face"), thresholded, split into connected regions, one box per region.
- `DlibDetector`: dlib's HOG frontal-face detector, fully offline (no model file).

Both are callables `video (F, H, W, 3) float in [0, 1] → list (per frame) of lists of boxes`.
"""

import functools
from collections.abc import Callable

import numpy as np
from scipy import ndimage

from magicme.errors import ConfigError
from magicme.vcd.boxes import Box
from magicme.video_io import to_uint8

Probabilities = Callable[[np.ndarray, str], np.ndarray]  # (N, H, W, 3) images, prompt → (N, H, W) in [0, 1]


def mask_boxes(mask: np.ndarray, min_size: int) -> list[Box]:
    """One box per 8-connected region of a boolean (H, W) mask; regions narrower or shorter than `min_size` px are
    dropped (Impact Pack's `drop_size`)."""
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    boxes = []
    for rows, cols in ndimage.find_objects(labels):
        if rows.stop - rows.start >= min_size and cols.stop - cols.start >= min_size:
            boxes.append((float(cols.start), float(rows.start), float(cols.stop), float(rows.stop)))
    return boxes


class ClipSegDetector:
    """Face boxes from a `probabilities(images, prompt)` segmenter (e.g. `magicme.segmentation.ClipSegSegmenter`)."""

    def __init__(self, probabilities: Probabilities, prompt: str = "face", threshold: float = 0.5,
                 min_size: int = 10, batch: int = 8):
        self.probabilities, self.prompt, self.threshold = probabilities, prompt, threshold
        self.min_size, self.batch = min_size, batch

    def __call__(self, video: np.ndarray) -> list[list[Box]]:
        detections = []
        for i in range(0, len(video), self.batch):
            probs = self.probabilities(video[i:i + self.batch], self.prompt)
            detections += [mask_boxes(p >= self.threshold, self.min_size) for p in probs]
        return detections


class DlibDetector:
    """dlib's HOG face detector; `upsample` doubles the image that many times to find smaller faces, `threshold`
    is dlib's score offset (higher: fewer, surer detections)."""

    def __init__(self, upsample: int = 1, threshold: float = 0.0, min_size: int = 10):
        try:
            import dlib
        except ImportError as err:
            raise ConfigError("face.detector: dlib is not installed; pip install 'magicme[faces]' (dlib-bin) or use "
                              "detector: clipseg") from err
        self.detector = dlib.get_frontal_face_detector()
        self.upsample, self.threshold, self.min_size = upsample, threshold, min_size

    def __call__(self, video: np.ndarray) -> list[list[Box]]:
        detections = []
        for frame in to_uint8(video):
            rects, _, _ = self.detector.run(frame, self.upsample, self.threshold)
            boxes = [(float(r.left()), float(r.top()), float(r.right() + 1), float(r.bottom() + 1)) for r in rects]
            detections.append([b for b in boxes if min(b[2] - b[0], b[3] - b[1]) >= self.min_size])
        return detections


@functools.lru_cache(maxsize=1)
def _clipseg(model_path: str, device: str):
    from magicme.segmentation import ClipSegSegmenter

    return ClipSegSegmenter(model_path, device=device)


def make_detector(section, device: str = "cpu") -> Callable[[np.ndarray], list[list[Box]]]:
    """The detector a validated `face:` section asks for; the CLIPSeg model is loaded once and reused."""
    if section.detector == "dlib":
        return DlibDetector(section.dlib_upsample, section.dlib_threshold, section.min_size)
    segmenter = _clipseg(str(section.clipseg_model), str(device))
    return ClipSegDetector(segmenter.probabilities, section.clipseg_prompt, section.threshold, section.min_size)
