"""Face identity with dlib: does the person in the video look like the person in the reference photos?

Each image → its most confident HOG frontal face → 5 landmarks → dlib's 128-d ResNet face descriptor
(`dlib_face_recognition_resnet_model_v1.dat`, from the `face_recognition_models` package). dlib's convention: two
descriptors closer than 0.6 (Euclidean) are the same person (99.38% on LFW).
"""

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from magicme.errors import ConfigError
from magicme.faces import DlibFaces, import_dlib, to_uint8_contiguous

SAME_PERSON_DISTANCE = 0.6


@dataclass
class FaceScores:
    detected: float  # share of frames with a face
    distance: float  # mean Euclidean distance, frame face ↔ reference face, over all such pairs
    cosine: float  # mean cosine similarity over the same pairs
    match: float  # share of frames with a face whose mean distance to the references is < 0.6


def face_scores(frame_faces: list[np.ndarray | None], reference_faces: np.ndarray) -> FaceScores:
    """Scores of one video from its per-frame descriptors (None: no face) and the (R, 128) reference descriptors.

    NaN where undefined: no reference face, or no face in any frame (then only `detected` is a number).
    """
    found = [f for f in frame_faces if f is not None]
    detected = len(found) / len(frame_faces) if frame_faces else float("nan")
    if not found or len(reference_faces) == 0:
        return FaceScores(detected, float("nan"), float("nan"), float("nan"))
    faces = np.stack(found).astype(np.float64)
    refs = np.asarray(reference_faces, dtype=np.float64)
    distances = np.linalg.norm(faces[:, None] - refs[None], axis=-1)  # (frames with a face, references)
    cosines = (faces @ refs.T) / np.outer(np.linalg.norm(faces, axis=1), np.linalg.norm(refs, axis=1))
    match = float((distances.mean(axis=1) < SAME_PERSON_DISTANCE).mean())
    return FaceScores(detected, float(distances.mean()), float(cosines.mean()), match)


def face_models_module(purpose: str = "face metric"):
    """`face_recognition_models` (dlib's model files), or a ConfigError saying how to install it or skip faces."""
    try:
        with warnings.catch_warnings():  # face_recognition_models imports the deprecated pkg_resources
            warnings.simplefilter("ignore")
            import face_recognition_models as models
    except ImportError as err:
        raise ConfigError(f"{purpose}: {err.name} is not installed; `pip install -e .[faces]` (dlib-bin, "
                          f"face-recognition-models, setuptools<81) or pass --no-faces") from err
    return models


def check_face_models() -> None:
    """Before any model loads: dlib imports and the two model files the face metric reads are on disk."""
    import_dlib("face metric")
    models = face_models_module()
    for path in (models.pose_predictor_five_point_model_location(), models.face_recognition_model_location()):
        if not Path(path).is_file():
            raise ConfigError(f"face metric: {path} is missing; reinstall face-recognition-models or pass --no-faces")


class FaceEncoder:
    """The shared dlib face detector (magicme/faces.py) + 5-point shape predictor + ResNet descriptor, loaded once."""

    def __init__(self, upsample: int = 1):
        purpose = "face metric"
        dlib = import_dlib(purpose)
        models = face_models_module(purpose)
        self.faces = DlibFaces(upsample=upsample, purpose=purpose)
        self.landmarks = dlib.shape_predictor(models.pose_predictor_five_point_model_location())
        self.encoder = dlib.face_recognition_model_v1(models.face_recognition_model_location())

    def describe(self, image: np.ndarray) -> np.ndarray | None:
        """The 128-d descriptor of the most confident face in a float [0, 1] (H, W, 3) image, or None."""
        pixels = to_uint8_contiguous(image)
        found = self.faces.detect(pixels)
        if not found:
            return None
        box, _ = max(found, key=lambda item: item[1])
        return np.asarray(self.encoder.compute_face_descriptor(pixels, self.landmarks(pixels, box)))
