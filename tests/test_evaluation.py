"""Evaluation: metric math (hand-computed), tiny real-format models end to end, dlib on a real photo, reports,
and one clear ConfigError per bad input."""

import csv
import json
import math
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from magicme.errors import ConfigError
from magicme.evaluation import faces as faces_module
from magicme.evaluation import metrics as metrics_module
from magicme.evaluation.evaluate import EvalSettings, evaluate, load_settings
from magicme.evaluation.faces import FaceEncoder, face_scores
from magicme.evaluation.metrics import (
    ClipEncoder, DinoEncoder, cosine_matrix, frame_indices, mean_similarity, temporal_consistency,
)
from magicme.evaluation.report import COLUMNS
from magicme.evaluation.runs import group_key, load_runs, run_labels
from magicme.tiny.eval_models import save_tiny_clip, save_tiny_dino
from magicme.video_io import read_video, write_frames, write_video

skdata = pytest.importorskip("skimage.data")
PROMPT = "a photo of embedding:altman man riding a horse"


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    return skdata.astronaut().astype(np.float32) / 255.0


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("eval-models")
    return {"clip": str(save_tiny_clip(root / "clip")), "dino": str(save_tiny_dino(root / "dino"))}


@pytest.fixture(scope="session")
def faces() -> FaceEncoder:
    return FaceEncoder()


@pytest.fixture(scope="session")
def references(tmp_path_factory, astronaut) -> Path:
    folder = tmp_path_factory.mktemp("refs")
    Image.fromarray(skdata.astronaut()).save(folder / "astronaut.png")
    (folder / "masks").mkdir()  # sub-folders (cached masks) are ignored
    return folder


def record(index: int, stage: str, files: dict, frames: int, prompt: str = PROMPT, seed: int = 42) -> dict:
    return {"index": index, "prompt": prompt, "negative_prompt": "blurry", "seed": seed, "gamma": 0.1,
            "stage": stage, "files": files, "frames": frames, "height": 512, "width": 512, "fps": 8, "seconds": 1.0}


def write_run(folder: Path, records: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


@pytest.fixture(scope="session")
def runs(tmp_path_factory, astronaut) -> list[Path]:
    """Run A: t2v = the reference photo 3× (lossless PNG frames); face = astronaut, mirror, grey, astronaut (MP4).
    Run B: t2v = flat grey (GIF), no face anywhere."""
    root = tmp_path_factory.mktemp("runs")
    grey = np.full_like(astronaut, 0.5)
    a = root / "gamma-0.1"
    a.mkdir()
    same = write_frames(a / "0000-a-photo-42", np.stack([astronaut] * 3))
    mixed = write_video(a / "0000-a-photo-42_face", np.stack([astronaut, astronaut[:, ::-1], grey, astronaut]), 8)
    write_run(a, [record(0, "t2v", {"frames": same}, 3), record(0, "face", mixed, 4)])
    b = root / "gamma-0"
    b.mkdir()
    flat = write_video(b / "0000-a-photo-7", np.stack([grey] * 2), 8, formats=("gif",))
    write_run(b, [record(0, "t2v", flat, 2, seed=7)])
    return [a, b]


@pytest.fixture(scope="session")
def report(tmp_path_factory, runs, references, models) -> tuple[Path, list[str]]:
    embedded = []
    original = ClipEncoder.texts

    def spy(self, texts):
        embedded.extend(texts)
        return original(self, texts)

    ClipEncoder.texts = spy
    try:
        out = evaluate(runs, references, tmp_path_factory.mktemp("out") / "eval",
                       EvalSettings(clip=models["clip"], dino=models["dino"], device="cpu"), progress=False)
    finally:
        ClipEncoder.texts = original
    return out, embedded


def videos_by(out: Path) -> dict[tuple[str, str], dict]:
    data = json.loads((out / "metrics.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    return {(v["run"], v["stage"]): v for v in data["videos"]}


# --- pure math ---------------------------------------------------------------------------------------------------

def test_cosine_math_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    assert torch.allclose(cosine_matrix(a, a[:1]), torch.tensor([[1.0], [0.0], [2 ** -0.5]], dtype=torch.float64))
    assert mean_similarity(a, a[:2]) == pytest.approx((1 + 0 + 0 + 1 + 2 * 2 ** -0.5) / 6)
    assert temporal_consistency(a) == pytest.approx((0 + 2 ** -0.5) / 2)
    assert math.isnan(temporal_consistency(a[:1]))


def test_frame_indices():
    assert frame_indices(16, 4) == [0, 5, 10, 15]
    assert frame_indices(16, 1) == [0]
    assert frame_indices(16, 0) == list(range(16))
    assert frame_indices(3, 8) == [0, 1, 2]


def test_face_scores_by_hand():
    refs = np.array([[1.0, 0.0]])
    scores = face_scores([None, np.array([1.2, 0.0]), np.array([0.3, 0.4])], refs)
    assert scores.detected == pytest.approx(2 / 3)
    assert scores.distance == pytest.approx((0.2 + math.sqrt(0.65)) / 2)
    assert scores.cosine == pytest.approx((1.0 + 0.6) / 2)
    assert scores.match == pytest.approx(0.5)  # 0.2 < 0.6 matches, 0.806 does not
    none = face_scores([None, None], refs)
    assert none.detected == 0 and math.isnan(none.distance) and math.isnan(none.match)
    assert math.isnan(face_scores([np.array([1.0, 0.0])], np.zeros((0, 2))).distance)


# --- tiny real-format models -------------------------------------------------------------------------------------

def test_tiny_models_are_deterministic(tmp_path, models, astronaut):
    again = ClipEncoder(str(save_tiny_clip(tmp_path / "clip")), torch.device("cpu"))
    first = ClipEncoder(models["clip"], torch.device("cpu"))
    assert torch.equal(again.images([astronaut]), first.images([astronaut]))
    dino = DinoEncoder(models["dino"], torch.device("cpu"))
    assert dino.images([astronaut, astronaut[:, ::-1]]).shape == (2, 32)


def test_hub_style_legacy_processor_config_gives_the_same_embeddings(tmp_path, models, astronaut):
    """openai/clip-vit-large-patch14 ships an old-style preprocessor_config.json (CLIPFeatureExtractor, int sizes)."""
    legacy = tmp_path / "clip"
    shutil.copytree(models["clip"], legacy)
    (legacy / "processor_config.json").unlink()
    (legacy / "preprocessor_config.json").write_text(json.dumps({
        "feature_extractor_type": "CLIPFeatureExtractor", "size": 32, "crop_size": 32, "do_center_crop": True,
        "do_resize": True, "do_normalize": True, "resample": 3, "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711]}))
    cpu = torch.device("cpu")
    frames = [astronaut, astronaut[100:300, 50:450]]
    assert torch.allclose(ClipEncoder(str(legacy), cpu).images(frames), ClipEncoder(models["clip"], cpu).images(frames))


def test_run_labels_and_table_order(runs):
    assert run_labels([Path("a/run"), Path("b/run"), Path("c/other")]) == ["a/run", "b/run", "other"]
    samples = load_runs([runs[1], runs[0]])
    order = sorted(samples, key=lambda s: group_key(s, ["gamma-0", "gamma-0.1"]))
    assert [(s.run, s.stage) for s in order] == [("gamma-0", "t2v"), ("gamma-0.1", "t2v"), ("gamma-0.1", "face")]


def test_identical_frames_and_self_reference_score_one(report):
    t2v = videos_by(report[0])[("gamma-0.1", "t2v")]
    assert t2v["frames"] == 3
    assert t2v["temporal"] == pytest.approx(1.0, abs=1e-6)
    assert t2v["clip_i"] == pytest.approx(1.0, abs=1e-6)
    assert t2v["dino"] == pytest.approx(1.0, abs=1e-6)
    assert t2v["face_detected"] == 1.0 and t2v["face_match"] == 1.0
    assert t2v["face_distance"] == pytest.approx(0.0, abs=1e-6)


def test_clip_t_embeds_the_prompt_without_id_tokens(report, models, astronaut):
    out, embedded = report
    t2v = videos_by(out)[("gamma-0.1", "t2v")]
    assert t2v["eval_prompt"] == "a photo of man riding a horse"
    assert set(embedded) == {"a photo of man riding a horse"}
    clip = ClipEncoder(models["clip"], torch.device("cpu"))
    frames = clip.images([astronaut])
    assert t2v["clip_t"] == pytest.approx(mean_similarity(frames, clip.texts(["a photo of man riding a horse"])),
                                          abs=1e-6)
    assert t2v["clip_t"] != pytest.approx(mean_similarity(frames, clip.texts([PROMPT])), abs=1e-6)


# --- dlib face identity on real photos ---------------------------------------------------------------------------

def test_astronaut_and_mirror_are_the_same_person(faces, astronaut):
    photo, mirror = faces.describe(astronaut), faces.describe(np.ascontiguousarray(astronaut[:, ::-1]))
    assert photo.shape == (128,)
    assert np.linalg.norm(photo - mirror) < 0.6
    assert faces.describe(np.full((512, 512, 3), 0.5, np.float32)) is None


def test_face_metric_counts_frames_without_a_face(report):
    videos = videos_by(report[0])
    mixed = videos[("gamma-0.1", "face")]
    assert mixed["face_detected"] == pytest.approx(0.75)  # the grey frame has no face
    assert mixed["face_match"] == 1.0 and 0.0 < mixed["face_distance"] < 0.6
    grey = videos[("gamma-0", "t2v")]
    assert grey["face_detected"] == 0.0 and grey["face_distance"] is None  # NaN → null in JSON


# --- reports -----------------------------------------------------------------------------------------------------

class Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.images, self.tables, self.text = [], [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            self.images.append(attrs["src"])
        if tag == "table":
            self.tables.append(attrs.get("id"))

    def handle_data(self, data):
        self.text.append(data)


def test_report_files(report):
    out = report[0]
    with (out / "metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["level"], r["run"], r["stage"]) for r in rows] == [
        ("video", "gamma-0.1", "t2v"), ("video", "gamma-0.1", "face"), ("video", "gamma-0", "t2v"),
        ("aggregate", "gamma-0.1", "t2v"), ("aggregate", "gamma-0.1", "face"), ("aggregate", "gamma-0", "t2v")]
    assert float(rows[3]["clip_i"]) == pytest.approx(float(rows[0]["clip_i"]))  # one video: mean = itself
    parser = Collector()
    parser.feed((out / "report.html").read_text(encoding="utf-8"))
    assert parser.tables == ["summary", "videos"]
    assert parser.tags.count("svg") == len(COLUMNS)
    assert len(parser.images) == 1 + 3  # references + one contact sheet per video
    assert all(src.startswith("data:image/png;base64,") for src in parser.images)
    text = " ".join(parser.text)
    assert "gamma-0.1" in text and "CLIP-I" in text and "Face match" in text
    assert not list(out.glob(".*"))  # no temporary files left


# --- bad input: one ConfigError each, before any model loads -----------------------------------------------------

def test_bad_inputs(tmp_path, runs, references, models):
    settings = EvalSettings(clip=models["clip"], dino=models["dino"], device="cpu")

    def fails(match, samples=(runs[0],), refs=references, **changes):
        with pytest.raises(ConfigError, match=match):
            evaluate(list(samples), refs, tmp_path / "out", EvalSettings(**{**vars(settings), **changes}), False)

    empty = tmp_path / "empty"
    empty.mkdir()
    fails("no samples.jsonl", samples=[empty])
    fails("give at least one", samples=[])
    fails("not a folder", refs=tmp_path / "nobody")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no photos")
    fails("holds no images", refs=tmp_path / "notes")
    missing = write_run(tmp_path / "missing", [record(0, "t2v", {"mp4": "0000-gone-42.mp4"}, 16)])
    fails("0000-gone-42.mp4 is missing", samples=[missing])
    odd = write_run(tmp_path / "odd", [record(0, "t2v", {"txt": "notes.txt"}, 16)])
    fails("names no video", samples=[odd])
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "samples.jsonl").write_text('{"index": 0, "prompt": "x"')
    fails("line 1: not valid JSON", samples=[broken])
    listless = write_run(tmp_path / "listless", [])
    fails("no samples listed", samples=[listless])
    fails("clip: .* not a model folder", clip=str(tmp_path / "nothing"))
    swapped = write_run(tmp_path / "swapped", [record(0, "t2v", {"mp4": "0000-a-photo-42_face.mp4"}, 16)])
    (swapped / "0000-a-photo-42_face.mp4").write_bytes((runs[0] / "0000-a-photo-42_face.mp4").read_bytes())
    fails(r"records \(frames, height, width\) = \(16, 512, 512\), the file holds \(4, 512, 512\)",
          samples=[swapped])
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="session")
def bomb(tmp_path_factory) -> Path:
    """A 10 KB PNG that decodes to 81 megapixels (a decompression bomb that Pillow itself lets through: its own
    warning starts at 89 MP, its error at 179 MP)."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    Image.new("1", (9000, 9000)).save(path)
    return path


def listing_with(tmp_path: Path, files: dict) -> Path:
    """A run folder whose samples.jsonl lists a proper video on line 1 and `files` on line 2."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "ok.mp4").write_bytes(b"video")
    return write_run(run, [record(0, "t2v", {"mp4": "ok.mp4"}, 16), record(1, "t2v", files, 16)])


@pytest.mark.parametrize("case", ["dotdot", "absolute", "symlink", "symlinked-folder", "symlinked-frame"])
def test_listed_files_outside_the_run_folder_are_refused(tmp_path, case):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.mp4").write_bytes(b"someone else's file")
    Image.new("RGB", (8, 8)).save(outside / "frame-0000.png")
    run = listing_with(tmp_path, {})
    files = {"dotdot": {"mp4": "../outside/x.mp4"}, "absolute": {"mp4": str(outside / "x.mp4")},
             "symlink": {"mp4": "link.mp4"}, "symlinked-folder": {"frames": "frames"},
             "symlinked-frame": {"frames": "frames"}}[case]
    if case == "symlink":
        (run / "link.mp4").symlink_to(outside / "x.mp4")
    if case == "symlinked-folder":
        (run / "frames").symlink_to(outside)
    if case == "symlinked-frame":
        (run / "frames").mkdir()
        Image.new("RGB", (8, 8)).save(run / "frames" / "frame-0000.png")
        (run / "frames" / "frame-0001.png").symlink_to(outside / "frame-0000.png")
    write_run(run, [record(0, "t2v", {"mp4": "ok.mp4"}, 16), record(1, "t2v", files, 16)])
    with pytest.raises(ConfigError, match=r"samples\.jsonl, line 2: files\.(mp4|frames): .* leads outside the run "
                                          r"folder"):
        load_runs([run])


def test_symlinks_that_stay_inside_the_run_folder_are_fine(tmp_path):
    run = listing_with(tmp_path, {"mp4": "alias.mp4"})
    (run / "alias.mp4").symlink_to(run / "ok.mp4")
    assert [s.path.name for s in load_runs([run])] == ["ok.mp4", "alias.mp4"]


def test_bad_out_is_refused_before_any_model_loads(tmp_path, runs, references, models, monkeypatch, capsys):
    def no_models(*args, **kwargs):
        raise AssertionError("a model was loaded before --out was checked")

    monkeypatch.setattr(metrics_module, "ClipEncoder", no_models)
    monkeypatch.setattr(metrics_module, "DinoEncoder", no_models)
    taken = tmp_path / "report.html"
    taken.write_text("keep me")
    settings = EvalSettings(clip=models["clip"], dino=models["dino"], device="cpu")
    for out in (taken, taken / "eval"):
        with pytest.raises(ConfigError, match=f"--out: {taken} is a file, not a folder"):
            evaluate([runs[1]], references, out, settings, progress=False)
    from scripts.evaluate import main

    assert main(["--samples", str(runs[1]), "--references", str(references), "--out", str(taken), "--clip",
                 models["clip"], "--dino", models["dino"], "--quiet"]) == 2
    assert capsys.readouterr().err.splitlines() == [f"error: --out: {taken} is a file, not a folder; choose another "
                                                    f"--out"]
    assert taken.read_text() == "keep me"


def test_reference_photos_are_read_safely(tmp_path, runs, references, bomb, models):
    settings = EvalSettings(clip=models["clip"], dino=models["dino"], device="cpu")
    folder = tmp_path / "refs"
    shutil.copytree(references, folder)
    shutil.copy(bomb, folder / "zz-bomb.png")
    with pytest.raises(ConfigError, match=r"zz-bomb\.png: 9000x9000 pixels is more than the 64 MP limit for "
                                          r"a reference photo"):
        evaluate([runs[1]], folder, tmp_path / "out", settings, progress=False)
    (folder / "zz-bomb.png").write_bytes(b"not an image")
    with pytest.raises(ConfigError, match=r"zz-bomb\.png: cannot read this reference photo"):
        evaluate([runs[1]], folder, tmp_path / "out", settings, progress=False)
    assert not (tmp_path / "out").exists()


def test_frame_folders_are_read_safely(tmp_path, bomb):
    frames = tmp_path / "frames"
    frames.mkdir()
    Image.new("RGB", (8, 8), "red").save(frames / "frame-0000.PNG")
    (frames / "frame-0001.png").mkdir()  # a folder with an image's name is not a frame
    (frames / "notes.txt").write_text("not a frame")
    video = read_video(frames)
    assert video.shape == (1, 8, 8, 3) and video.dtype == np.float32 and video[0, 0, 0].tolist() == [1.0, 0.0, 0.0]
    shutil.copy(bomb, frames / "frame-0002.png")
    with pytest.raises(ConfigError, match=r"frame-0002\.png: 9000x9000 pixels is more than the 64 MP limit "
                                          r"for a frame image"):
        read_video(frames)


@pytest.mark.parametrize("text, problem", [("faces: [true\n", "not valid YAML"),
                                           ("- clip\n- dino\n", "the top level is a list, not a mapping"),
                                           ("clip: ${nope}\n", "clip: .*nope")])
def test_malformed_settings_files_are_one_line_errors(tmp_path, references, text, problem, capsys):
    config = tmp_path / "eval.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=problem):
        load_settings(config)
    from scripts.evaluate import main

    assert main(["--samples", str(tmp_path), "--references", str(references), "--config", str(config)]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("error: ") and "eval.yaml" in line


def test_settings_file_and_cli(tmp_path, runs, references, models, capsys):
    config = tmp_path / "eval.yaml"
    config.write_text("frames_per_video: 2\nfaces: false\n")
    settings = load_settings(config, {"clip": models["clip"], "device": None})
    assert (settings.frames_per_video, settings.faces, settings.clip, settings.device) == (2, False, models["clip"],
                                                                                          "auto")
    config.write_text("frames_per_vido: 2\n")
    with pytest.raises(ConfigError, match="frames_per_vido"):
        load_settings(config)
    for text, problem in (("frames_per_video: -1", "frames_per_video: -1 is below 0"),
                          ("batch_size: 0", "batch_size: 0 is below 1")):
        config.write_text(text)
        with pytest.raises(ConfigError, match=problem):
            load_settings(config)
    from scripts.evaluate import main

    assert main(["--samples", str(tmp_path), "--references", str(references), "--quiet"]) == 2
    assert "error: --samples:" in capsys.readouterr().err
    out = tmp_path / "cli"
    assert main(["--samples", str(runs[1]), "--references", str(references), "--out", str(out), "--clip",
                 models["clip"], "--dino", models["dino"], "--device", "cpu", "--frames-per-video", "1",
                 "--no-faces", "--quiet"]) == 0
    video = json.loads((out / "metrics.json").read_text())["videos"][0]
    assert video["frames"] == 1 and video["face_detected"] is None


# --- protocol ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("word", ["man", "woman"])
def test_protocol_gives_a_valid_sampling_config(tmp_path, word):
    from magicme.evaluation.protocol import protocol_config
    from magicme.schema import expand_samples, load_sample_config

    repo = Path(__file__).resolve().parents[1]
    config = protocol_config(repo / "configs/sample/example.yaml", repo / f"configs/eval/prompts_{word}.yaml",
                             "altman")
    path = tmp_path / "altman.yaml"
    path.write_text(OmegaConf.to_yaml(config))
    samples = expand_samples(load_sample_config(path))
    assert len(samples) == 100 and len({s.prompt for s in samples}) == 25
    assert all(f"embedding:altman {word} " in s.prompt for s in samples)
    assert sorted({s.seed for s in samples}) == [0, 1, 2, 3]
    with pytest.raises(ConfigError, match="--name"):
        protocol_config(repo / "configs/sample/example.yaml", repo / f"configs/eval/prompts_{word}.yaml", "a b")


def test_protocol_fills_id_with_the_name_and_its_class_word(tmp_path, capsys):
    from scripts.make_eval_config import main

    repo = Path(__file__).resolve().parents[1]
    protocol = tmp_path / "prompts_dog.yaml"
    protocol.write_text("class_word: dog\nseeds: [5]\nprompts:\n  - a photo of {id} running, {id} barking\n")
    out = tmp_path / "rex.yaml"
    assert main(["--protocol", str(protocol), "--name", "rex", "--base", str(repo / "configs/sample/example.yaml"),
                 "--out", str(out)]) == 0
    config = OmegaConf.load(out)
    assert list(config.prompts) == ["a photo of embedding:rex dog running, embedding:rex dog barking"]
    assert list(config.seeds) == [5]


@pytest.mark.parametrize("text, problem", [
    ("class_word: man\nprompts:\n  - a photo of embedding:{name} man\n",
     r"prompt 1 uses the old \{name\} placeholder; write \{id\}"),
    ("prompts:\n  - a photo of {id}\n", "no class_word; add e.g. `class_word: woman`"),
    ("class_word: man\nprompts:\n  - a photo of {id}\n  - a photo of a man\n", r"prompt 2 .* has no \{id\}"),
    ("class_word: man\n", "no prompts"),
    ("class_word: [man\n", "not valid YAML"),
    ("class_word: ${nope}\nprompts:\n  - a photo of {id}\n", "class_word: .*nope"),
])
def test_bad_protocols_are_one_line_errors(tmp_path, text, problem, capsys):
    from scripts.make_eval_config import main

    repo = Path(__file__).resolve().parents[1]
    protocol = tmp_path / "prompts.yaml"
    protocol.write_text(text)
    out = tmp_path / "out.yaml"
    assert main(["--protocol", str(protocol), "--name", "ann", "--base", str(repo / "configs/sample/example.yaml"),
                 "--out", str(out)]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("error: ") and re.search(problem, line), line
    assert not out.exists()


def test_bad_base_config_and_out_are_one_line_errors(tmp_path, capsys):
    from scripts.make_eval_config import main

    repo = Path(__file__).resolve().parents[1]
    base = tmp_path / "base.yaml"
    base.write_text("steps: ${nope}\n")
    args = ["--protocol", str(repo / "configs/eval/prompts_man.yaml"), "--name", "ann"]
    assert main([*args, "--base", str(base), "--out", str(tmp_path / "a.yaml")]) == 2
    assert re.fullmatch(r"error: steps: .*nope.*", capsys.readouterr().err.strip())
    assert main([*args, "--base", str(repo / "configs/sample/example.yaml"), "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"error: --out: {tmp_path} is a folder")
    assert not (tmp_path / "a.yaml").exists()


# --- grids: each identity against its own photos --------------------------------------------------------------------


@pytest.fixture(scope="session")
def grid(tmp_path_factory, astronaut) -> tuple[Path, Path]:
    """A grid run of two identities (ann: the astronaut, bob: flat grey) and dataset/<identity>/ with each one's
    photo: each video equals its own identity's photo, so CLIP-I against its own references is 1."""
    root = tmp_path_factory.mktemp("grid")
    grey = np.full((64, 64, 3), 0.5, dtype=np.float32)
    small = np.asarray(Image.fromarray(skdata.astronaut()).resize((64, 64)), dtype=np.float32) / 255.0
    run = root / "grid"
    run.mkdir()
    rows = []
    for index, (name, image) in enumerate((("ann", small), ("bob", grey))):
        frames = write_frames(run / f"{name}-42", np.stack([image] * 2))
        rows.append({**record(index, "t2v", {"frames": frames}, 2), "identity": name, "height": 64, "width": 64,
                     "prompt": f"a photo of embedding:{name} person"})
        (root / "dataset" / name).mkdir(parents=True)
        Image.fromarray(np.round(image * 255).astype(np.uint8)).save(root / "dataset" / name / "photo.png")
    write_run(run, rows)
    return run, root / "dataset"


def test_a_grid_is_scored_per_identity_with_a_mean_row(tmp_path, grid, models):
    run, dataset = grid
    settings = EvalSettings(clip=models["clip"], dino=models["dino"], device="cpu", faces=False)
    out = evaluate([run], dataset, tmp_path / "eval", settings, progress=False)
    groups = json.loads((out / "metrics.json").read_text())["groups"]
    assert [(g["stage"], g["identity"], g["videos"]) for g in groups] == [
        ("t2v", "ann", 1), ("t2v", "bob", 1), ("t2v", "mean", 2)]
    assert groups[0]["clip_i"] == pytest.approx(1.0) and groups[1]["clip_i"] == pytest.approx(1.0)
    assert groups[0]["dino"] == pytest.approx(1.0) and groups[2]["clip_i"] == pytest.approx(1.0)
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [(r["level"], r["identity"]) for r in rows] == [
        ("video", "ann"), ("video", "bob"), ("aggregate", "ann"), ("aggregate", "bob"), ("aggregate", "mean")]
    # the same videos against one identity's photos for both: bob's grey is not the astronaut
    swapped = tmp_path / "swapped"
    shutil.copytree(dataset, swapped)
    shutil.copy(dataset / "ann" / "photo.png", swapped / "bob" / "photo.png")
    crossed = json.loads((evaluate([run], swapped, tmp_path / "crossed", settings, progress=False)
                          / "metrics.json").read_text())["groups"]
    assert crossed[1]["clip_i"] < 0.99


def test_grid_references_are_checked_before_any_model_loads(tmp_path, grid, models, monkeypatch):
    def no_models(*args, **kwargs):
        raise AssertionError("a model was loaded before the references were checked")

    monkeypatch.setattr(metrics_module, "ClipEncoder", no_models)
    run, dataset = grid
    settings = EvalSettings(clip=models["clip"], dino=models["dino"], device="cpu", faces=False)
    with pytest.raises(ConfigError, match=r"holds one identity's photos, but the runs show 2 identities \(ann, bob\)"):
        evaluate([run], dataset / "ann", tmp_path / "eval", settings, progress=False)
    partial = tmp_path / "partial"
    shutil.copytree(dataset / "ann", partial / "ann")
    with pytest.raises(ConfigError, match="has no folder bob/ for identity 'bob'"):
        evaluate([run], partial, tmp_path / "eval", settings, progress=False)
    assert not (tmp_path / "eval").exists()


def test_missing_model_files_are_found_before_any_model_loads(tmp_path, runs, references, models, monkeypatch):
    def no_models(*args, **kwargs):
        raise AssertionError("a model was loaded before the model files were checked")

    monkeypatch.setattr(metrics_module, "ClipEncoder", no_models)
    settings = EvalSettings(clip=models["clip"], dino=models["dino"], device="cpu")
    weightless = tmp_path / "clip"
    weightless.mkdir()
    shutil.copy(Path(models["clip"]) / "config.json", weightless / "config.json")
    with pytest.raises(ConfigError, match=f"clip: {weightless} has a config.json but no weights"):
        evaluate([runs[1]], references, tmp_path / "eval", EvalSettings(**{**vars(settings), "clip": str(weightless)}),
                 progress=False)

    class Gone:
        @staticmethod
        def pose_predictor_five_point_model_location():
            return str(tmp_path / "shape_predictor_5_face_landmarks.dat")

        face_recognition_model_location = pose_predictor_five_point_model_location

    monkeypatch.setattr(faces_module, "face_models_module", lambda purpose="face metric": Gone)
    with pytest.raises(ConfigError, match="face metric: .*shape_predictor_5_face_landmarks.dat is missing"):
        evaluate([runs[1]], references, tmp_path / "eval", settings, progress=False)
    assert not (tmp_path / "eval").exists()
