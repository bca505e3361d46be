"""Finding faces in frames: one module for Face VCD (where to crop) and evaluation (whose face it is).

Two detectors: dlib's HOG frontal-face detector (offline, from the `dlib-bin` package) and CLIPSeg
prompt-to-segmentation ("face" probabilities thresholded into connected regions: the model training's masks use).
Both return, per frame, boxes `(x0, y0, x1, y1)` in pixels (`boxes`), and with them a face segmentation per frame
(`segment`): CLIPSeg's thresholded regions, or for dlib the convex hull of the 68 face landmarks (brows to chin).
Heavy imports happen when a detector is built.
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
    """dlib's HOG frontal-face detector; `upsample` 1 finds faces down to ~40 px. `landmarks` also loads the
    68-point shape predictor (from `face_recognition_models`) for `segment`."""

    def __init__(self, upsample: int = 1, min_face: int = 0, purpose: str = "face.detector", landmarks: bool = False):
        dlib = import_dlib(purpose)
        self.detector = dlib.get_frontal_face_detector()
        self.upsample, self.min_face = upsample, min_face
        self.predictor = None
        if landmarks:
            try:
                import face_recognition_models as models
            except ImportError as err:
                raise ConfigError(f"{purpose}: face masks from dlib need the 68-point landmark model; pip install "
                                  "face-recognition-models (or `pip install -e .[faces]`)") from err
            self.predictor = dlib.shape_predictor(models.pose_predictor_model_location())

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

    def segment(self, video: np.ndarray) -> tuple[list[list[Box]], np.ndarray]:
        """Per frame, each face's box (its detection joined with its landmarks' extent) and one (F, H, W) bool
        mask: the convex hulls of the faces' 68 landmarks."""
        from PIL import Image, ImageDraw
        from scipy.spatial import ConvexHull

        if self.predictor is None:
            raise ValueError("DlibFaces(landmarks=True) is needed for face masks")
        h, w = video.shape[1:3]
        found, masks = [], np.zeros(video.shape[:3], dtype=bool)
        for index, frame in enumerate(video):
            pixels, boxes = to_uint8_contiguous(frame), []
            canvas = Image.new("L", (w, h))
            for rect, _ in self.detect(pixels):
                shape = self.predictor(pixels, rect)
                points = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
                hull = points[ConvexHull(points).vertices]
                xs = np.append(hull[:, 0], [rect.left(), rect.right()])
                ys = np.append(hull[:, 1], [rect.top(), rect.bottom()])
                box = (max(0, int(xs.min())), max(0, int(ys.min())), min(w, int(xs.max()) + 1),
                       min(h, int(ys.max()) + 1))
                if min(box[2] - box[0], box[3] - box[1]) >= self.min_face:
                    boxes.append(box)
                    ImageDraw.Draw(canvas).polygon([tuple(p) for p in hull], fill=1)
            found.append(boxes)
            masks[index] = np.asarray(canvas, dtype=bool)
        return found, masks


def regions_from_probabilities(probs: np.ndarray, threshold: float, min_face: int) -> tuple[list[list[Box]], np.ndarray]:
    """Per frame, the bounding box of each connected region above `threshold` whose sides are at least
    `min_face` px, and a (F, H, W) bool mask of those regions (CLIPSeg face regions)."""
    from scipy import ndimage

    found, masks = [], np.zeros(probs.shape, dtype=bool)
    for index, frame in enumerate(probs):
        labels, _ = ndimage.label(frame >= threshold)
        boxes = []
        for label, s in enumerate(ndimage.find_objects(labels), start=1):
            if s is not None and min(s[1].stop - s[1].start, s[0].stop - s[0].start) >= min_face:
                boxes.append((s[1].start, s[0].start, s[1].stop, s[0].stop))
                masks[index] |= labels == label
        found.append(boxes)
    return found, masks


class ClipSegFaces:
    """CLIPSeg probabilities for `prompt` ("face"), thresholded into connected regions: one box each."""

    def __init__(self, model_path: str, prompt: str, threshold: float, min_face: int, device="cpu"):
        from magicme.segmentation import ClipSegSegmenter

        self.segmenter = ClipSegSegmenter(model_path, device=device)
        self.prompt, self.threshold, self.min_face = prompt, threshold, min_face

    def segment(self, video: np.ndarray) -> tuple[list[list[Box]], np.ndarray]:
        probs = self.segmenter.probabilities(video, self.prompt)
        return regions_from_probabilities(probs, self.threshold, self.min_face)

    def boxes(self, video: np.ndarray) -> list[list[Box]]:
        return self.segment(video)[0]
