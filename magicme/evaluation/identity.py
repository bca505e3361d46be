"""Face-identity backends for evaluation, one registry: `dlib` (the offline default, magicme/evaluation/faces.py),
`arcface` (insightface's antelopev2 / buffalo_l ONNX files) and `curricularface` (CurricularFace IR-101 weights,
aligned by the same insightface detector), scored as ConsisID's `eval/get_facesim_fid.py` scores them.

The recipe (ConsisID; OpenS2V-Eval's `get_facesim.py` is the same with 32 frames): per image, SCRFD faces → the
largest by box area (retried on a 1.25× grey-padded copy when none is found) → its 5 landmarks → ArcFace embeds the
112-px `norm_crop`; the 224-px `norm_crop` is the face crop CurricularFace (resized to 112) and FID-face read.
Per frame: cosine to the reference, clamped at 0; per video: the mean over frames with a face, 0 when none has.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from magicme.errors import ConfigError
from magicme.evaluation.alignment import import_cv2, norm_crop

CROP = 224  # ConsisID's aligned face crop (CurricularFace's input after a resize to 112; FID-face's input)
DETECTION_SIZE = 320  # ConsisID / OpenS2V: FaceAnalysis.prepare(det_size=(320, 320))
PAD_SCALE = 1.25
# the model files of insightface's packs: (detector, ArcFace recogniser)
PACKS = {"antelopev2": ("scrfd_10g_bnkps.onnx", "glintr100.onnx"), "buffalo_l": ("det_10g.onnx", "w600k_r50.onnx")}


@dataclass
class Face:
    """The largest face of one image: landmarks (5, 2) in the image's pixels, its 224-px aligned RGB crop and
    the embeddings each backend made of it."""

    landmarks: np.ndarray
    crop: np.ndarray
    embeddings: dict[str, np.ndarray]


def consisid_frames(total: int, count: int) -> list[int]:
    """`np.linspace(0, total − 1, count, dtype=int)` as ConsisID (16) and OpenS2V (32) sample; repeats kept, as
    theirs are, when the video is shorter than `count`."""
    return [int(i) for i in np.linspace(0, total - 1, count, dtype=int)]


def facesim(reference: np.ndarray | None, frames: list[np.ndarray | None]) -> float:
    """ConsisID's FaceSim of one video: per frame with a face, max(0, cosine to the reference embedding); the mean
    of those; 0 when no frame (or the reference) has a face."""
    if reference is None:
        return 0.0
    ref = reference / np.linalg.norm(reference)
    scores = [max(0.0, float(ref @ f / np.linalg.norm(f))) for f in frames if f is not None]
    return float(np.mean(scores)) if scores else 0.0


def largest(boxes: np.ndarray) -> int:
    """Index of the largest box by area (ConsisID's `sorted(..., key=area)[-1]`: the last of equal areas)."""
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return int(len(areas) - 1 - np.argmax(areas[::-1]))


def pad(image: np.ndarray, scale: float = PAD_SCALE) -> tuple[np.ndarray, tuple[int, int]]:
    """`image` with a grey (128) border of (scale − 1) × its size on every side, and the (left, top) offset."""
    h, w = image.shape[:2]
    top, left = int(h * (scale - 1)), int(w * (scale - 1))
    padded = np.full((h + 2 * top, w + 2 * left, 3), 128, dtype=np.uint8)
    padded[top:top + h, left:left + w] = image
    return padded, (left, top)


class ArcFace:
    """An insightface ArcFace recogniser ONNX file: a 112-px aligned RGB crop → its embedding. Normalised as
    insightface's ArcFaceONNX decides from the graph: files that start with their own Sub/Mul take raw pixels,
    the others (x − 127.5) / 127.5."""

    def __init__(self, path: Path, providers: list[str] | None = None):
        import onnx
        import onnxruntime

        graph = onnx.load(str(path), load_external_data=False).graph
        early = [node.op_type for node in graph.node[:8]]
        self.mean, self.std = (0.0, 1.0) if "Sub" in early and "Mul" in early else (127.5, 127.5)
        self.session = onnxruntime.InferenceSession(str(path), providers=providers or ["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def embed(self, crop: np.ndarray) -> np.ndarray:
        blob = ((crop.astype(np.float32) - self.mean) / self.std).transpose(2, 0, 1)[None]
        return self.session.run(None, {self.input: blob})[0][0].astype(np.float64)


class CurricularFace:
    """CurricularFace IR-101 (magicme/evaluation/irnet.py) on ConsisID's input: the 224-px crop resized to 112,
    (x / 255 − 0.5) / 0.5, the embedding L2-normalised."""

    def __init__(self, path: Path, device: str = "cpu"):
        from magicme.evaluation.irnet import load_irnet

        self.model, self.device = load_irnet(path).to(device), device

    def embed(self, crop: np.ndarray) -> np.ndarray:
        import torch

        cv2 = import_cv2("curricularface")
        pixels = torch.from_numpy(cv2.resize(crop, (112, 112))).permute(2, 0, 1)[None].float()
        with torch.no_grad():
            embedding = self.model(((pixels / 255 - 0.5) / 0.5).to(self.device))[0].double().cpu().numpy()
        return embedding / np.linalg.norm(embedding)


def pack_files(folder: Path | str) -> tuple[Path, Path]:
    """(detector, recogniser) of an insightface model pack folder (antelopev2 or buffalo_l)."""
    folder = Path(folder)
    for detector, recogniser in PACKS.values():
        if (folder / detector).is_file() and (folder / recogniser).is_file():
            return folder / detector, folder / recogniser
    names = "; ".join(f"{d} + {r}" for d, r in PACKS.values())
    raise ConfigError(f"arcface: {folder} holds no insightface model pack ({names}); unpack antelopev2 or buffalo_l "
                      f"there (non-commercial weights, see docs/evaluation.md)")


# The registry of recognisers behind the insightface detector: `facesim_<short>` column → (settings key, loader
# (path, device) → embed(aligned crop)); the aligned crop size each reads (ArcFace 112 px, CurricularFace ConsisID's
# 224 px). dlib, the offline default, keeps its own pipeline (faces.py) and columns (`face_*`).
RECOGNISERS = {
    "arc": ("arcface", lambda path, device: ArcFace(pack_files(path)[1]).embed),
    "cur": ("curricularface", lambda path, device: CurricularFace(Path(path), device).embed),
}
CROP_SIZES = {"arc": 112, "cur": CROP}


class InsightFaces:
    """SCRFD detection + alignment of the pack (always: CurricularFace reads its crops too), then every
    configured recogniser of `RECOGNISERS`."""

    def __init__(self, arcface: str | None, curricularface: str | None, device: str = "cpu"):
        from magicme.evaluation.scrfd import Scrfd

        if not arcface:
            raise ConfigError("arcface: no insightface model pack given; curricularface reads the faces its "
                              "detector aligns, so set `arcface:` to the antelopev2 / buffalo_l folder too")
        detector, _ = pack_files(arcface)
        self.detector = Scrfd(detector, DETECTION_SIZE)
        paths = {"arcface": arcface, "curricularface": curricularface}
        self.models: dict[str, Callable[[np.ndarray], np.ndarray]] = {
            short: load(paths[key], device) for short, (key, load) in RECOGNISERS.items() if paths[key]}

    def landmarks(self, image: np.ndarray) -> np.ndarray | None:
        """The largest face's 5 landmarks, trying a grey-padded copy when the image has none (ConsisID)."""
        boxes, _, points = self.detector.detect(image)
        if len(boxes):
            return points[largest(boxes)]
        padded, offset = pad(image)
        boxes, _, points = self.detector.detect(padded)
        return points[largest(boxes)] - np.array(offset) if len(boxes) else None

    def face(self, image: np.ndarray) -> Face | None:
        """The largest face of a uint8 RGB image, or None."""
        landmarks = self.landmarks(image)
        if landmarks is None:
            return None
        crop = norm_crop(image, landmarks, CROP)
        crops = {112: norm_crop(image, landmarks, 112), CROP: crop}
        embeddings = {short: embed(crops[CROP_SIZES[short]]) for short, embed in self.models.items()}
        return Face(landmarks, crop, embeddings)

