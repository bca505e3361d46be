"""SCRFD face detection from insightface's ONNX files (`det_10g.onnx` in antelopev2 and buffalo_l), decoded as
insightface's `model_zoo/scrfd.py` does: the image resized into the detector's square input keeping its aspect
(top-left, zero padding), normalised (x − 127.5) / 128 in RGB; per stride (8, 16, 32) and anchor (2 per cell),
a score, a box as distances from the anchor centre and 5 landmarks as offsets, all in stride units; boxes with
score ≥ 0.5 kept after non-maximum suppression at IoU 0.4."""

from pathlib import Path

import numpy as np

from magicme.evaluation.alignment import import_cv2

STRIDES = (8, 16, 32)
SCORE_THRESHOLD, NMS_THRESHOLD = 0.5, 0.4


def anchor_centres(height: int, width: int, stride: int, anchors: int) -> np.ndarray:
    """(height · width · anchors, 2) x, y centres in input pixels, row-major over cells, anchors innermost."""
    ys, xs = np.mgrid[:height, :width]
    centres = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float32) * stride
    return np.repeat(centres, anchors, axis=0)


def distance_to_box(centres: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """(left, top, right, bottom) distances → (x0, y0, x1, y1)."""
    return np.concatenate([centres - distances[:, :2], centres + distances[:, 2:4]], axis=1)


def distance_to_points(centres: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """(N, 2k) offsets → (N, k, 2) points."""
    return centres[:, None, :] + offsets.reshape(len(offsets), -1, 2)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """Greedy non-maximum suppression: indices kept, best first (insightface's `nms`, areas with its +1)."""
    x0, y0, x1, y1 = boxes.T
    areas = (x1 - x0 + 1) * (y1 - y0 + 1)
    order, keep = list(np.argsort(-scores, kind="stable")), []
    while order:
        i, rest = order[0], np.array(order[1:], dtype=int)
        keep.append(int(i))
        w = np.maximum(0.0, np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]) + 1)
        iou = w * h / (areas[i] + areas[rest] - w * h)
        order = [int(j) for j in rest[iou <= threshold]]
    return keep


def decode(outputs: list[np.ndarray], size: int, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The detector's 9 outputs (scores, boxes, landmarks per stride) → boxes (N, 4), scores (N,), landmarks
    (N, 5, 2) in the original image's pixels, after thresholding and NMS."""
    boxes, scores, points = [], [], []
    for index, stride in enumerate(STRIDES):
        score = outputs[index].reshape(-1)
        cells = (size // stride) ** 2
        anchors = len(score) // cells
        centres = anchor_centres(size // stride, size // stride, stride, anchors)
        keep = score >= SCORE_THRESHOLD
        boxes.append(distance_to_box(centres, outputs[index + 3].reshape(-1, 4) * stride)[keep])
        points.append(distance_to_points(centres, outputs[index + 6].reshape(len(score), -1) * stride)[keep])
        scores.append(score[keep])
    boxes, scores, points = np.concatenate(boxes) / scale, np.concatenate(scores), np.concatenate(points) / scale
    keep = nms(boxes, scores, NMS_THRESHOLD) if len(scores) else []
    return boxes[keep], scores[keep], points[keep]


class Scrfd:
    """An SCRFD ONNX detector run with onnxruntime on the CPU (or the given providers)."""

    def __init__(self, path: Path, size: int = 640, providers: list[str] | None = None):
        import onnxruntime

        self.session = onnxruntime.InferenceSession(str(path), providers=providers or ["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        shape = self.session.get_inputs()[0].shape
        # a fixed input size in the file wins over the requested one, as in insightface
        self.size = shape[2] if isinstance(shape[2], int) else size

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Faces of a uint8 RGB (H, W, 3) image: boxes, scores, landmarks (best first)."""
        cv2 = import_cv2("face detection")
        h, w = image.shape[:2]
        scale = self.size / max(h, w)
        new_w, new_h = int(w * scale), int(h * scale)
        canvas = np.zeros((self.size, self.size, 3), dtype=np.float32)
        canvas[:new_h, :new_w] = cv2.resize(image, (new_w, new_h))
        blob = ((canvas - 127.5) / 128.0).transpose(2, 0, 1)[None].astype(np.float32)
        outputs = self.session.run(None, {self.input: blob})
        return decode(outputs, self.size, new_h / h)
