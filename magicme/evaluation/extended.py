"""The metrics papers since Magic-Me report, scored beside the paper's set: FaceSim-Arc / FaceSim-Cur (ConsisID),
motion amplitude and smoothness, identity drift and copy-paste. One registration point for
`evaluate.py`: `EXTENDED_COLUMNS` (what the tables show) and `ExtendedScorer.score` (what each video adds).

ArcFace and CurricularFace are off unless their model files are given (`arcface:`, `curricularface:`); motion
needs only OpenCV. A metric that is off is NaN, like a face metric without a face."""

from pathlib import Path

import numpy as np

from magicme.errors import ConfigError
from magicme.evaluation.identity import RECOGNISERS, Face, InsightFaces, consisid_frames, facesim, pack_files
from magicme.evaluation.video_metrics import (
    copy_paste, identity_drift, motion_amplitude, motion_smoothness, optical_flow,
)
from magicme.video_io import to_uint8

EXTENDED_COLUMNS = {
    "facesim_arc": ("FaceSim-Arc", "ArcFace cosine to the reference face, clamped at 0, mean over sampled frames "
                                   "with a face (ConsisID)"),
    "facesim_cur": ("FaceSim-Cur", "CurricularFace cosine on the same aligned faces (ConsisID)"),
    "motion_amplitude": ("Motion", "OpenS2V motion_fb: |mean Farneback flow| (px per frame)"),
    "motion_smoothness": ("Flow jitter ↓", "mean change of the flow between consecutive frame pairs (px)"),
    "identity_drift": ("ID drift ↓", "ArcFace similarity of the first quarter minus the last quarter"),
    "copy_paste": ("Pose dist", "aligned-landmark distance to the closest reference pose (low: copied pose)"),
}


def check_files(settings) -> None:
    """The identity model paths, before any model loads."""
    for key in ("arcface", "curricularface"):
        value = getattr(settings, key)
        if value and not Path(value).exists():
            raise ConfigError(f"{key}: {value} does not exist; give the model file or folder (docs/evaluation.md) "
                              f"or leave {key} empty")
    if settings.arcface:
        pack_files(settings.arcface)
    if settings.curricularface and not Path(settings.curricularface).is_file():
        raise ConfigError(f"curricularface: {settings.curricularface} is not a file; give the IR-101 backbone "
                          f"(glint360k_curricular_face_r101_backbone.bin)")
    if settings.curricularface and not settings.arcface:
        raise ConfigError("arcface: curricularface reads the faces insightface's detector aligns; set arcface to "
                          "the antelopev2 / buffalo_l folder too")


class ExtendedScorer:
    """Loads the configured face models once, then scores videos against an identity's reference faces."""

    def __init__(self, settings, device: str = "cpu"):
        self.settings = settings
        self.faces = InsightFaces(settings.arcface, settings.curricularface, device) if settings.arcface else None

    def reference_faces(self, images: list[np.ndarray]) -> list[Face]:
        """The faces found in an identity's reference photos (none when no face model is configured)."""
        found = [self.faces.face(to_uint8(i)) for i in images] if self.faces else []
        return [f for f in found if f is not None]

    @staticmethod
    def facesims(faces: list[Face | None], references: list[Face]) -> dict[str, float]:
        """FaceSim per backend: ConsisID's score against each reference photo, averaged over the photos."""
        out = {}
        for short in RECOGNISERS:
            if not references or short not in references[0].embeddings:
                out[f"facesim_{short}"] = float("nan")
                continue
            frames = [f.embeddings[short] if f else None for f in faces]
            out[f"facesim_{short}"] = float(np.mean([facesim(r.embeddings[short], frames) for r in references]))
        return out

    def score(self, frames: np.ndarray, references: list[Face]) -> dict[str, float]:
        nan = float("nan")
        metrics = dict.fromkeys(EXTENDED_COLUMNS, nan)
        if self.settings.motion:
            flow = optical_flow(frames)
            metrics.update(motion_amplitude=motion_amplitude(flow), motion_smoothness=motion_smoothness(flow))
        if self.faces:
            picked = [frames[i] for i in consisid_frames(len(frames), self.settings.facesim_frames)]
            faces = [self.faces.face(to_uint8(f)) for f in picked]
            metrics.update(self.facesims(faces, references))
            stacked = np.stack([r.embeddings["arc"] for r in references]) if references else np.zeros((0, 1))
            metrics["identity_drift"] = identity_drift([f.embeddings["arc"] if f else None for f in faces],
                                                       stacked, self.settings.drift_window)
            metrics["copy_paste"] = copy_paste([f.landmarks if f else None for f in faces],
                                               [r.landmarks for r in references])
        return metrics
