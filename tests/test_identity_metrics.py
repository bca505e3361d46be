"""Face-identity backends (ArcFace / CurricularFace as ConsisID scores them), motion, drift and copy-paste: exact
tests on constructed inputs, and the tiny ONNX / IR fixtures through the real loaders."""

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

from magicme.errors import ConfigError
from magicme.evaluation import alignment, identity, scrfd, video_metrics
from magicme.evaluation.irnet import layout, load_irnet

cv2 = pytest.importorskip("cv2")
pytest.importorskip("onnxruntime")
skdata = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def face_models(tmp_path_factory) -> dict[str, Path]:
    from magicme.tiny.face_models import save_tiny_curricularface, save_tiny_insightface_pack

    folder = tmp_path_factory.mktemp("faces")
    return {"pack": save_tiny_insightface_pack(folder / "buffalo_l"),
            "cur": save_tiny_curricularface(folder / "glint360k_curricular_face_r101_backbone.bin")}


@pytest.fixture(scope="module")
def insight(face_models) -> identity.InsightFaces:
    return identity.InsightFaces(str(face_models["pack"]), str(face_models["cur"]))


def bright_square(h=128, w=160, box=(40, 90, 50, 100)) -> np.ndarray:
    """What the tiny detector calls a face: a bright patch on black."""
    image = np.zeros((h, w, 3), np.uint8)
    image[box[0]:box[1], box[2]:box[3]] = 255
    image[box[0] + 10:box[0] + 20, box[2] + 10:box[3] - 10] = 180  # some texture for the embeddings
    return image


def texture(h=96, w=96, seed=0) -> np.ndarray:
    """Smooth random texture (what optical flow can track), uint8 RGB."""
    noise = np.random.default_rng(seed).random((h, w)).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), 3)
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    return np.repeat((smooth * 255).astype(np.uint8)[..., None], 3, axis=-1)


# --- alignment --------------------------------------------------------------------------------------------------

def test_similarity_transform_recovers_a_known_one():
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -5.0])
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    src = alignment.ARCFACE_TEMPLATE
    dst = src @ rotation.T + shift
    matrix = alignment.similarity_transform(src, dst)
    assert np.allclose(matrix[:, :2], rotation) and np.allclose(matrix[:, 2], shift)
    # aligned landmarks undo any similarity: a moved, turned, scaled face has the template's own layout
    assert np.allclose(alignment.aligned_landmarks(dst), src)


def test_norm_crop_of_template_landmarks_is_the_image_itself():
    image = texture(112, 112)
    assert np.array_equal(alignment.norm_crop(image, alignment.ARCFACE_TEMPLATE, 112), image)
    big = alignment.norm_crop(image, alignment.ARCFACE_TEMPLATE, 224)  # 224: the template × 2
    assert big.shape == (224, 224, 3)
    assert abs(int(big[100, 100, 0]) - int(image[50, 50, 0])) <= 2


# --- SCRFD decoding ---------------------------------------------------------------------------------------------

def test_anchor_centres_boxes_points_and_nms_by_hand():
    centres = scrfd.anchor_centres(2, 3, 8, 2)
    assert centres.tolist()[:4] == [[0, 0], [0, 0], [8, 0], [8, 0]] and centres.tolist()[-1] == [16, 8]
    assert scrfd.distance_to_box(np.array([[10.0, 20.0]]), np.array([[1.0, 2.0, 3.0, 4.0]])).tolist() == \
        [[9.0, 18.0, 13.0, 24.0]]
    assert scrfd.distance_to_points(np.array([[10.0, 20.0]]), np.array([[1.0, -1.0, 2.0, 2.0]])).tolist() == \
        [[[11.0, 19.0], [12.0, 22.0]]]
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], float)
    assert scrfd.nms(boxes, np.array([0.9, 0.8, 0.7]), 0.4) == [0, 2]
    assert scrfd.nms(boxes, np.array([0.5, 0.8, 0.7]), 0.4) == [1, 2]


def test_decode_finds_the_one_confident_anchor():
    size = 64
    outputs = []
    for stride in scrfd.STRIDES:  # scores, then boxes, then landmarks, per stride
        outputs.append(np.zeros(((size // stride) ** 2 * 2, 1), np.float32))
    outputs[0][2 * (1 * 8 + 3) + 1] = 0.9  # stride 8, cell (y=1, x=3), second anchor: centre (24, 8)
    outputs += [np.ones((len(o), 4), np.float32) for o in outputs[:3]]
    outputs += [np.zeros((len(o), 10), np.float32) for o in outputs[:3]]
    boxes, scores, points = scrfd.decode(outputs, size, scale=0.5)  # the image was shrunk by 2 for the detector
    assert scores.tolist() == pytest.approx([0.9])
    assert boxes.tolist() == [[32.0, 0.0, 64.0, 32.0]]
    assert points[0].tolist() == [[48.0, 16.0]] * 5


def test_largest_face_and_grey_padding():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 20, 20], [5, 5, 25, 25]], float)
    assert identity.largest(boxes) == 2  # equal areas: the last, as ConsisID's sorted(...)[-1]
    padded, offset = identity.pad(np.zeros((40, 80, 3), np.uint8))
    assert offset == (20, 10) and padded.shape == (60, 120, 3) and padded[0, 0, 0] == 128


def test_consisid_frame_sampling():
    assert identity.consisid_frames(49, 16) == [int(i) for i in np.linspace(0, 48, 16, dtype=int)]
    assert identity.consisid_frames(16, 16) == list(range(16))
    assert identity.consisid_frames(4, 16)[:5] == [0, 0, 0, 0, 0]  # repeats kept, as ConsisID's


# --- FaceSim ----------------------------------------------------------------------------------------------------

def test_facesim_by_hand():
    ref = np.array([1.0, 0.0])
    assert identity.facesim(ref, [np.array([2.0, 0.0])]) == 1.0
    # cosines 1, 0 (orthogonal), clamped −1 → 0; the frame without a face is left out
    assert identity.facesim(ref, [np.array([1.0, 0.0]), np.array([0.0, 3.0]), np.array([-1.0, 0.0]), None]) == \
        pytest.approx(1 / 3)
    assert identity.facesim(ref, [None, None]) == 0.0 and identity.facesim(None, [ref]) == 0.0


def test_tiny_pack_same_face_scores_one_and_no_face_is_none(insight):
    image = bright_square()
    face = insight.face(image)
    assert face is not None and set(face.embeddings) == {"arc", "cur"}
    assert face.crop.shape == (224, 224, 3)
    again = insight.face(image.copy())
    for short in ("arc", "cur"):
        assert identity.facesim(face.embeddings[short], [again.embeddings[short]]) == pytest.approx(1.0)
    # the tiny detector follows the bright square: moved by 32 px (two stride-32 cells at the detector's 2×
    # scale), its landmarks move by exactly 32 px in the image
    moved = insight.face(bright_square(box=(40, 90, 82, 132)))
    assert np.allclose(moved.landmarks - face.landmarks, [32.0, 0.0], atol=1e-3)
    assert insight.face(np.zeros((64, 64, 3), np.uint8)) is None
    other = insight.face(bright_square(box=(20, 110, 10, 150)))
    assert identity.facesim(face.embeddings["arc"], [other.embeddings["arc"]]) < 0.999


def test_curricularface_reads_the_ir_layout(face_models, tmp_path):
    import torch

    state = torch.load(face_models["cur"], weights_only=True)
    assert layout(state, "x") == (4, [(4, 1), (8, 1), (12, 1), (16, 1)], 8)
    assert load_irnet(face_models["cur"])(torch.zeros(2, 3, 112, 112)).shape == (2, 8)
    bad = tmp_path / "bad.bin"
    torch.save({"weight": torch.zeros(1)}, bad)
    with pytest.raises(ConfigError, match="not an IR face backbone"):
        load_irnet(bad)
    with pytest.raises(ConfigError, match="is not a file"):
        load_irnet(tmp_path / "missing.bin")


def test_pack_folder_must_hold_a_pack(tmp_path):
    with pytest.raises(ConfigError, match="holds no insightface model pack"):
        identity.pack_files(tmp_path)


def tom_hanks() -> np.ndarray | None:
    spec = importlib.util.find_spec("insightface")
    path = Path(spec.origin).parent / "data" / "images" / "Tom_Hanks_54745.png" if spec else None
    if path is None or not path.is_file():
        pytest.skip("insightface (its sample photo) is not installed; scripts/setup_env.sh installs it")
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0


def test_two_real_people_are_apart_by_dlibs_threshold():
    from magicme.evaluation.faces import SAME_PERSON_DISTANCE, FaceEncoder

    faces = FaceEncoder(1)
    astronaut = skdata.astronaut().astype(np.float32) / 255.0
    a, b = faces.describe(astronaut), faces.describe(tom_hanks())
    assert np.linalg.norm(a - b) > SAME_PERSON_DISTANCE  # different people
    assert np.linalg.norm(a - faces.describe(np.ascontiguousarray(astronaut[:, ::-1]))) < SAME_PERSON_DISTANCE
    assert video_metrics.window_similarity([b], a[None]) < video_metrics.window_similarity([a], a[None]) == \
        pytest.approx(1.0)


# --- motion, drift, copy-paste ----------------------------------------------------------------------------------

def test_identical_frames_have_no_motion():
    frames = np.stack([texture()] * 4).astype(np.float32) / 255
    flow = video_metrics.optical_flow(frames)
    assert flow.shape == (3, 96, 96, 2)
    # zero up to Farneback's numerical noise (~1e-4 px at the borders)
    assert video_metrics.motion_amplitude(flow) == pytest.approx(0.0, abs=1e-3)
    assert video_metrics.motion_smoothness(flow) == pytest.approx(0.0, abs=1e-3)


def test_a_known_shift_gives_a_known_flow():
    base = texture(128, 128)
    frames = np.stack([np.roll(base, 2 * t, axis=1) for t in range(4)]).astype(np.float32) / 255  # 2 px/frame right
    flow = video_metrics.optical_flow(frames)
    inner = flow[:, 24:-24, 24:-24]  # away from the wrapped edge
    assert np.median(inner[..., 0]) == pytest.approx(2.0, abs=0.1)
    assert np.median(inner[..., 1]) == pytest.approx(0.0, abs=0.1)
    # OpenS2V's amplitude: |mean of x and y components| ≈ (2 + 0) / 2; a steady pan has (almost) no jitter
    assert video_metrics.motion_amplitude(flow) == pytest.approx(1.0, abs=0.15)
    steady = video_metrics.motion_smoothness(flow)
    jerky = np.stack([np.roll(base, s, axis=1) for s in (0, 3, 3, 6)]).astype(np.float32) / 255
    assert steady < 0.3 < video_metrics.motion_smoothness(video_metrics.optical_flow(jerky))


def test_identity_drift_by_hand():
    ref = np.array([[1.0, 0.0]])
    same, gone = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    assert video_metrics.identity_drift([same] * 8, ref) == 0.0
    assert video_metrics.identity_drift([same, same] + [same] * 4 + [gone, gone], ref) == 1.0
    # windows of 4: [same, –, –, –] → 1; [same, –, –, gone] → 0.5
    assert video_metrics.identity_drift([same, None, None, None, same, None, None, gone], ref, window=0.5) == 0.5
    assert np.isnan(video_metrics.identity_drift([None, None, same, same], ref, window=0.5))


def test_copy_paste_by_hand():
    ref = alignment.ARCFACE_TEMPLATE
    moved = ref * 2.5 + 30  # the reference's pose and expression, elsewhere in the frame and larger
    assert video_metrics.copy_paste([moved, None], [ref]) == pytest.approx(0.0, abs=1e-9)
    smiling = ref.copy()
    smiling[3:, 1] += 4.0  # mouth corners down 4 px in the template frame
    distance = video_metrics.copy_paste([smiling], [ref])
    assert 0.5 < distance < 4.0
    assert video_metrics.copy_paste([smiling], [ref, smiling]) == pytest.approx(0.0, abs=1e-9)  # the closest
    assert np.isnan(video_metrics.copy_paste([None], [ref]))


def test_frechet_distance_by_hand():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(50, 3))
    assert video_metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert video_metrics.frechet_distance(a, a + 2.0) == pytest.approx(12.0, abs=1e-6)  # |μ shift|² = 3 · 2²
    # single rows (ConsisID's per-frame FID): covariances vanish, the squared distance is left
    assert video_metrics.frechet_distance(a[:1], a[1:2]) == pytest.approx(((a[0] - a[1]) ** 2).sum())


# --- wired into evaluate ------------------------------------------------------------------------------------------

def test_evaluate_reports_the_extended_metrics(tmp_path, face_models):
    import json

    from PIL import Image

    from magicme.evaluation.evaluate import EvalSettings, evaluate
    from magicme.tiny.eval_models import save_tiny_clip, save_tiny_dino
    from magicme.video_io import write_frames

    photo = bright_square(128, 128, (30, 90, 30, 90))
    refs = tmp_path / "refs"
    refs.mkdir()
    Image.fromarray(photo).save(refs / "me.png")
    run = tmp_path / "run"
    still = np.stack([photo] * 6).astype(np.float32) / 255
    write_frames(run / "0000-still", still)
    record = {"index": 0, "prompt": "a photo of embedding:me man", "seed": 1, "stage": "t2v",
              "files": {"frames": "0000-still"}, "frames": 6, "height": 128, "width": 128}
    (run / "samples.jsonl").write_text(json.dumps(record) + "\n")
    settings = EvalSettings(clip=str(save_tiny_clip(tmp_path / "clip")), dino=str(save_tiny_dino(tmp_path / "dino")),
                            device="cpu", faces=False, arcface=str(face_models["pack"]),
                            curricularface=str(face_models["cur"]), cache=False)
    out = evaluate([run], refs, tmp_path / "eval", settings, progress=False)
    video = json.loads((out / "metrics.json").read_text())["videos"][0]
    assert video["facesim_arc"] == pytest.approx(1.0) and video["facesim_cur"] == pytest.approx(1.0)
    assert video["identity_drift"] == pytest.approx(0.0, abs=1e-9)
    assert video["copy_paste"] == pytest.approx(0.0, abs=1e-6)
    assert video["motion_amplitude"] == pytest.approx(0.0, abs=1e-3)
    assert "facesim_arc" in (out / "metrics.csv").read_text().splitlines()[0].split(",")
    # off: NaN (null in JSON), not a number
    settings.arcface = settings.curricularface = ""
    settings.motion = False
    out = evaluate([run], refs, tmp_path / "eval-off", settings, progress=False)
    video = json.loads((out / "metrics.json").read_text())["videos"][0]
    assert video["facesim_arc"] is None and video["motion_amplitude"] is None


def test_missing_identity_model_is_one_error_before_loading(tmp_path):
    from magicme.evaluation.extended import check_files

    settings = type("S", (), {"arcface": str(tmp_path / "nope"), "curricularface": ""})()
    with pytest.raises(ConfigError, match="^arcface: .* does not exist"):
        check_files(settings)
    settings = type("S", (), {"arcface": str(tmp_path), "curricularface": ""})()
    with pytest.raises(ConfigError, match="^arcface: .* holds no insightface model pack"):
        check_files(settings)
    (tmp_path / "cur.bin").write_bytes(b"x")
    settings = type("S", (), {"arcface": "", "curricularface": str(tmp_path / "cur.bin")})()
    with pytest.raises(ConfigError, match="^arcface: curricularface reads"):
        check_files(settings)
    settings = type("S", (), {"arcface": "", "curricularface": str(tmp_path)})()
    with pytest.raises(ConfigError, match="^curricularface: .* is not a file"):
        check_files(settings)


def test_evaluate_cli_takes_the_identity_models(tmp_path, capsys):
    from scripts import evaluate as cli

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "samples.jsonl").write_text('{"prompt": "p", "stage": "t2v", "files": {"mp4": "a.mp4"}}\n')
    (tmp_path / "run" / "a.mp4").write_bytes(b"")
    (tmp_path / "refs").mkdir()
    from PIL import Image

    Image.fromarray(bright_square()).save(tmp_path / "refs" / "me.png")
    assert cli.main(["--samples", str(tmp_path / "run"), "--references", str(tmp_path / "refs"), "--clip",
                     "openai/clip-vit-large-patch14", "--dino", "facebook/dino-vits16", "--arcface",
                     str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.startswith("error: arcface: ")


def test_facesim_frames_and_drift_window_reach_the_scorer(face_models, monkeypatch):
    from types import SimpleNamespace

    from magicme.evaluation import extended

    settings = SimpleNamespace(arcface=str(face_models["pack"]), curricularface="", facesim_frames=3,
                               drift_window=0.5, motion=False)
    photo = bright_square(128, 128, (30, 90, 30, 90))
    scorer = extended.ExtendedScorer(settings)
    references = scorer.reference_faces([photo.astype(np.float32) / 255])
    seen, windows = [], []
    face = scorer.faces.face
    monkeypatch.setattr(scorer.faces, "face", lambda image: seen.append(image) or face(image))
    real_drift = extended.identity_drift
    monkeypatch.setattr(extended, "identity_drift", lambda f, r, w: windows.append((len(f), w)) or real_drift(f, r, w))
    scores = scorer.score(np.stack([photo] * 10).astype(np.float32) / 255, references)
    assert len(seen) == 3 and windows == [(3, 0.5)]
    assert scores["facesim_arc"] == pytest.approx(1.0) and math.isnan(scores["facesim_cur"])
    assert math.isnan(scores["motion_amplitude"])
