"""The lineart, depth and pose control preprocessors, single-file ControlNets and scripts/control_check.py: the pure
parts exactly (lineart against a scipy composition of the same formula and against OpenCV, the COCO → OpenPose
mapping, the skeleton drawing, the agreement measures), the model parts on the tiny random-weight models, and their
keys end to end through run_sampling. Random weights cannot show that a pose or depth is *kept*
(docs/control.md); scripts/control_check.py measures that on real weights."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel
from safetensors.torch import load_file
from scipy import ndimage

from magicme.control.agreement import depth_agreement, pose_agreement
from magicme.control.depth import depth_video, estimate_depth, normalise
from magicme.control.lineart import darkness, lineart, lineart_video
from magicme.control.nets import Control
from magicme.control.pose import COLOURS, draw_pose, estimate_keypoints, openpose_points, person_boxes, pose_video
from magicme.errors import ConfigError
from magicme.sampling import run_sampling
from magicme.schema import check_settings
from magicme.video_io import prepare_input_video
from magicme.tiny.controlnet import moving_square, save_gif, save_original_controlnet
from magicme.tiny.preprocessors import save_tiny_depth
from magicme.video_io import read_video
from tests.test_control import load, render

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "control_check.py"


def control_check():
    """scripts/control_check.py as a module (its main runs in this process: no second start-up of torch)."""
    spec = importlib.util.spec_from_file_location("control_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------------ lineart


def lineart_reference(image: np.ndarray) -> np.ndarray:
    """sd-webui-controlnet's lineart_standard formula composed from scipy's Gaussian filter (truncate 4 → 49 taps at
    σ 6, "mirror" = OpenCV's BORDER_REFLECT_101)."""
    x = image.astype(np.float64)
    dark = np.clip((ndimage.gaussian_filter(x, 6.0, mode="mirror", truncate=4.0, axes=(0, 1)) - x).min(axis=2), 0, 255)
    counted = dark[dark > 8]
    return np.clip(dark / max(16.0, np.median(counted)) * 127, 0, 255).astype(np.uint8)


def test_lineart_is_the_scipy_composition_on_a_real_image():
    from skimage import data

    image = data.astronaut()
    assert np.array_equal(lineart(image), lineart_reference(image))
    assert 0.2 < (lineart(image) > 0).mean() < 0.6  # lines, not an empty or full map


def test_lineart_matches_opencv_within_float32_rounding():
    cv2 = pytest.importorskip("cv2", reason="opencv-python-headless (a test extra) is the annotator's own blur")
    from skimage import data

    image = data.astronaut()
    x = image.astype(np.float32)
    dark = np.clip((cv2.GaussianBlur(x, (0, 0), 6.0) - x).min(axis=2), 0, 255)
    theirs = np.clip(dark / max(16, np.median(dark[dark > 8])) * 127, 0, 255).astype(np.uint8)
    difference = np.abs(theirs.astype(int) - lineart(image))
    assert difference.max() <= 1 and (difference > 0).mean() < 1e-4  # OpenCV blurs in float32


def test_lineart_of_flat_and_stepped_images():
    assert not lineart(np.full((20, 30, 3), 77, np.uint8)).any()
    image = np.full((40, 40, 3), 200, np.uint8)
    image[:, 20] = 20  # one dark line
    lines = lineart(image)
    # the line is the median of the dark pixels: 127 (mid-grey); the far ground black
    assert set(np.unique(lines[:, 20])) == {127} and lines[:, :15].max() == 0
    assert np.allclose(darkness(image)[:, 20], darkness(image)[0, 20])  # the same down the column


def test_lineart_video_is_three_equal_grey_channels():
    video = moving_square(3, 32)
    lines = lineart_video(video)
    assert lines.shape == (3, 32, 32, 3) and np.array_equal(lines[..., 0], lines[..., 2])
    assert np.array_equal(lines[1, ..., 1], lineart(np.round(video[1] * 255).astype(np.uint8)) / np.float32(255))


# ------------------------------------------------------------------------------------------------ pose


def test_coco_keypoints_become_openpose_points_with_a_neck():
    coco = np.arange(34, dtype=np.float64).reshape(17, 2)  # keypoint i at (2i, 2i + 1)
    scores = np.ones(17)
    points = openpose_points(coco, scores)
    order = [0, None, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3]
    for i, j in enumerate(order):
        expected = (coco[5] + coco[6]) / 2 if j is None else coco[j]
        assert np.array_equal(points[i], expected), i
    scores[6] = 0.3  # the right shoulder not seen (a score must exceed the threshold): no neck either
    points = openpose_points(coco, scores)
    assert np.isnan(points[2]).all() and np.isnan(points[1]).all() and not np.isnan(points[5]).any()


def test_draw_pose_draws_limbs_then_points_in_openpose_colours():
    points = np.full((18, 2), np.nan)
    points[1], points[2] = (10.0, 20.0), (40.0, 20.0)  # neck → right shoulder: limb 0, horizontal, 30 px
    canvas = draw_pose(points, 48, 64)
    assert tuple(canvas[20, 25]) == (153, 0, 0)  # limb 0: 0.6 × red
    assert tuple(canvas[24, 25]) == (153, 0, 0) and not canvas[25, 25].any()  # half-width 4 px
    assert tuple(canvas[20, 10]) == COLOURS[1] and tuple(canvas[20, 40]) == COLOURS[2]  # points on top
    assert (canvas == np.array(COLOURS[1])).all(axis=2).sum() == 49  # a disc of radius 4: 49 pixel centres
    assert not canvas[:10].any() and not canvas[:, 50:].any()
    points[2] = np.nan  # a limb needs both ends
    assert (draw_pose(points, 48, 64).any(axis=2)).sum() == 49


def test_pose_video_draws_the_tiny_vitpose_keypoints(tiny_bundle):
    video = moving_square(8, 64)
    keypoints, scores = estimate_keypoints(video, tiny_bundle["pose_model"])
    assert keypoints.shape == (8, 17, 2) and scores.shape == (8, 17)
    maps = pose_video(video, tiny_bundle["pose_model"])
    assert maps.shape == (8, 64, 64, 3) and maps.any()
    assert np.array_equal(maps[3], draw_pose(openpose_points(keypoints[3], scores[3]), 64, 64) / np.float32(255))
    colours = {tuple(c) for c in (np.round(maps * 255).astype(int)).reshape(-1, 3)}
    allowed = {(0, 0, 0)} | set(COLOURS) | {tuple(int(v * 0.6) for v in c) for c in COLOURS}
    assert colours <= allowed


def test_person_boxes_bound_the_mask_or_take_the_whole_frame():
    mask = np.zeros((2, 10, 12), dtype=bool)
    mask[0, 2:5, 3:8] = True
    mask[0, 9, 11] = True  # a stray pixel in the corner widens the box to it
    assert person_boxes(mask) == [[3.0, 2.0, 9.0, 8.0], [0.0, 0.0, 12.0, 10.0]]
    mask[0, 9, 11] = False
    assert person_boxes(mask)[0] == [3.0, 2.0, 5.0, 3.0]


def test_pose_edit_boxes_the_person_with_clipseg(tmp_path, tiny_bundle, monkeypatch):
    """`person:` loads CLIPSeg and boxes each frame by its person mask. The tiny CLIPSeg's random mask covers the
    frame in scattered pixels (its box is the whole frame), so its probabilities are replaced here by a fixed blob:
    the run's pose video is then VitPose's keypoints in the blob's box, not the whole frame's."""
    from magicme.segmentation import ClipSegSegmenter

    blob = np.zeros((8, 64, 64), dtype=np.float32)
    blob[:, 8:40, 20:44] = 0.9
    prompts = []

    def probabilities(self, images, prompt):
        prompts.append(prompt)
        assert images.shape == (8, 64, 64, 3)
        return blob

    monkeypatch.setattr(ClipSegSegmenter, "probabilities", probabilities)
    entry = {"model": str(tiny_bundle["controlnet"]), "type": "pose", "from": "input_video",
             "preprocessor": str(tiny_bundle["pose_model"]), "person": str(tiny_bundle["clipseg"])}
    out, _ = run(tmp_path, tiny_bundle, "person", control=[entry], input_video=str(tiny_bundle["input_clip"]),
                 steps=2)
    source = prepare_input_video(str(tiny_bundle["input_clip"]), 8, 64, 64)
    keypoints, scores = estimate_keypoints(source, tiny_bundle["pose_model"], boxes=[[20.0, 8.0, 24.0, 32.0]] * 8)
    boxed = np.stack([draw_pose(openpose_points(k, s), 64, 64) for k, s in zip(keypoints, scores)]) / np.float32(255)
    saved = read_video(out / "control-0-pose.gif")
    assert prompts == ["person"] and np.abs(saved - boxed).max() <= 1 / 255 + 1e-6
    assert not np.allclose(saved, pose_video(source, tiny_bundle["pose_model"]), atol=0.01)


# ------------------------------------------------------------------------------------------------ depth


def test_depth_video_is_the_model_depth_scaled_over_the_clip(tiny_bundle):
    video = moving_square(8, 64)
    raw = estimate_depth(video, tiny_bundle["depth_model"])
    assert raw.shape == (8, 64, 64)
    maps = depth_video(video, tiny_bundle["depth_model"])
    assert maps.shape == (8, 64, 64, 3) and maps.min() == 0 and maps.max() == 1
    assert np.allclose(maps[..., 1], (raw - raw.min()) / (raw.max() - raw.min()), atol=1e-6)
    assert not np.allclose(depth_video(video[:, ::-1], tiny_bundle["depth_model"]), maps)
    assert not normalise(np.full((2, 3, 3), 5.0)).any()


# ------------------------------------------------------------------------------------------------ single file


def test_single_file_controlnet_loads_to_the_folder_weights_and_video(tiny_pipeline, tiny_bundle, tmp_path):
    """The bundle's .safetensors, a .pth pickle of it, and one without the `control_model.` prefix (both forms are
    in circulation) all load to the folder's weights."""
    folder, single = tiny_bundle["controlnet"], tiny_bundle["controlnet_file"]
    state = load_file(single)
    assert all(k.startswith("control_model.") for k in state) and "control_model.zero_convs.0.0.weight" in state
    pth = save_original_controlnet(folder, tmp_path / "net.pth")
    torch.save({k.removeprefix("control_model."): v for k, v in state.items()}, tmp_path / "bare.pth")
    ours = ControlNetModel.from_pretrained(folder, local_files_only=True).state_dict()
    for path in (single, pth, tmp_path / "bare.pth"):
        loaded = ControlNetModel.from_single_file(str(path), config=str(folder), local_files_only=True).state_dict()
        assert ours.keys() == loaded.keys() and all(torch.equal(ours[k], loaded[k]) for k in ours), path
    video = moving_square(8, 64)

    def control(model, config):
        return Control.load([str(model)], [video], [1.0], [0.0], [1.0], "cpu", torch.float32, configs=[config])

    assert np.array_equal(render(tiny_pipeline, control(single, str(folder))), render(tiny_pipeline,
                                                                                       control(folder, None)))


# ------------------------------------------------------------------------------------------------ checks


@pytest.mark.parametrize("entry, message", [
    ({"type": "depth", "preprocessor": "nowhere"},
     r"^control\[0\].preprocessor: no depth model at nowhere .*; bash download_checkpoint.sh --only control$"),
    ({"type": "pose"}, r"^control\[0\].preprocessor: no pose model at models/control/vitpose-base-simple"),
    ({"type": "lineart", "preprocessor": "POSE"}, r"^control\[0\].preprocessor: lineart needs no model"),
    ({"type": "lineart", "low": 3}, r"^control\[0\]: low and high are canny's thresholds"),
    ({"model": "FILE"}, r"^control\[0\].config: .*controlnet_original.safetensors is a single file; set config"),
    ({"model": "FILE", "config": "SD"}, r"^control\[0\].config: .* is not a diffusers ControlNet folder"),
    ({"config": "NET"}, r"^control\[0\].config: only for a single-file model"),
    ({"model": "POSE/config.json"}, r"^control\[0\].model: .*config.json is not a ControlNet file"),
    ({"type": "pose", "preprocessor": "POSE", "person": "nowhere"},
     r"^control\[0\].person: no CLIPSeg model at nowhere; bash download_checkpoint.sh --only clipseg"),
    ({"type": "depth", "preprocessor": "POSE", "person": "POSE"}, r"^control\[0\].person: only for type pose"),
])
def test_bad_preprocessor_and_single_file_entries(tmp_path, tiny_bundle, entry, message, monkeypatch):
    paths = {"NET": str(tiny_bundle["controlnet"]), "FILE": str(tiny_bundle["controlnet_file"]),
             "SD": str(tiny_bundle["sd15"]), "POSE": str(tiny_bundle["pose_model"])}
    entry = {"model": "NET", "from": "input_video", **entry}
    if "type" not in entry:
        entry.pop("from")
        entry["video"] = str(tiny_bundle["control_clip"])
    entry = {k: paths.get(v.split("/")[0], v) + ("/config.json" if v.endswith("/config.json") else "")
             if isinstance(v, str) else v for k, v in entry.items()}
    monkeypatch.chdir(tmp_path)  # no models/ here: the default preprocessor folders are missing
    cfg = load(tmp_path, tiny_bundle, control=[entry], input_video=str(tiny_bundle["input_clip"]))

    def no_load(*args):
        raise AssertionError("a model was loaded")

    with pytest.raises(ConfigError, match=message) as error:
        check_settings(cfg)
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match=message):
        run_sampling(None, cfg=cfg, progress=False, load=no_load)


# ------------------------------------------------------------------------------------------------ runs


def run(tmp_path, tiny_bundle, name, **changes):
    cfg = load(tmp_path / name, tiny_bundle, **changes)
    out = run_sampling(None, cfg=cfg, progress=False)
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    return out, {r["stage"]: read_video(out / r["files"]["frames"]) for r in records}


def test_lineart_depth_and_pose_edits_save_their_control_videos(tmp_path, tiny_bundle, tmp_path_factory):
    net, clip = str(tiny_bundle["controlnet"]), str(tiny_bundle["input_clip"])
    edit = {"input_video": clip, "input_strength": 0.75, "steps": 2}
    entries = [{"model": net, "type": "lineart", "from": "input_video", "scale": 0.5},
               {"model": net, "type": "depth", "from": "input_video", "preprocessor": str(tiny_bundle["depth_model"])},
               {"model": net, "type": "pose", "from": "input_video", "preprocessor": str(tiny_bundle["pose_model"])}]
    other_depth = save_tiny_depth(tmp_path_factory.mktemp("depth") / "depth", seed=11)
    out, controlled = run(tmp_path, tiny_bundle, "all", control=entries, **edit)
    other, with_other = run(tmp_path, tiny_bundle, "other", control=[entries[0], {**entries[1], "preprocessor":
                                                                               str(other_depth)}, entries[2]], **edit)
    _, plain = run(tmp_path, tiny_bundle, "plain", **edit)
    source = prepare_input_video(clip, 8, 64, 64)
    assert np.array_equal(read_video(out / "control-0-lineart.gif"), lineart_video(source))
    expected = {"control-1-depth.gif": depth_video(source, tiny_bundle["depth_model"]),
                "control-2-pose.gif": pose_video(source, tiny_bundle["pose_model"])}
    for name, video in expected.items():
        assert np.abs(read_video(out / name) - video).max() <= 1 / 255 + 1e-6, name  # GIF frames are uint8
    assert not np.array_equal(read_video(other / "control-1-depth.gif"), read_video(out / "control-1-depth.gif"))
    assert not np.array_equal(with_other["edit"], controlled["edit"])  # the depth model's map reaches the edit
    assert not np.array_equal(controlled["edit"], plain["edit"])


def test_single_file_controlnet_through_a_run(tmp_path, tiny_bundle):
    folder, clip = str(tiny_bundle["controlnet"]), str(tiny_bundle["control_clip"])
    _, by_folder = run(tmp_path, tiny_bundle, "folder", control=[{"model": folder, "video": clip}], steps=2)
    _, by_file = run(tmp_path, tiny_bundle, "file", control=[{"model": str(tiny_bundle["controlnet_file"]),
                                                              "config": folder, "video": clip}], steps=2)
    assert np.array_equal(by_file["t2v"], by_folder["t2v"])


# ------------------------------------------------------------------------------------------------ control_check


def test_agreement_measures_on_known_keypoints_and_depth():
    reference = np.zeros((1, 3, 2))
    reference[0, :, 0] = [0, 50, 100]  # a person 100 px wide
    scores = np.ones((1, 3))
    assert pose_agreement(reference, scores, reference, scores) == {"keypoints": 3, "mean_distance": 0.0,
                                                                    "pck@0.1": 1.0}
    moved = reference.copy()
    moved[0, 0, 1] = 20.0  # one keypoint 0.2 persons away
    result = pose_agreement(reference, scores, moved, scores)
    assert result["pck@0.1"] == pytest.approx(2 / 3) and result["mean_distance"] == pytest.approx(0.2 / 3)
    assert pose_agreement(reference, scores, reference, np.array([[1, 1, 0]]))["pck@0.1"] == pytest.approx(2 / 3)
    depth = np.random.default_rng(0).random((2, 8, 8))
    assert depth_agreement(depth, 3 * depth + 1)["depth_correlation"] == pytest.approx(1.0)
    assert depth_agreement(depth, depth[:, ::-1])["depth_correlation"] < 0.5


def test_control_check_script_scores_identical_clips_perfectly_and_shifted_ones_worse(tmp_path, tiny_bundle,
                                                                                       capsys):
    script = control_check()
    video = moving_square(8, 64)
    same, shifted = save_gif(tmp_path / "same.gif", video), save_gif(tmp_path / "shifted.gif",
                                                                      np.roll(video, 12, axis=2))

    def check(output):
        assert script.main(["--input", str(same), "--output", str(output), "--pose", str(tiny_bundle["pose_model"]),
                            "--depth", str(tiny_bundle["depth_model"])]) == 0
        return json.loads(capsys.readouterr().out)

    perfect, worse = check(same), check(shifted)
    assert perfect["pose"]["pck@0.1"] == 1.0 and perfect["pose"]["mean_distance"] == 0.0
    assert perfect["depth"]["depth_correlation"] == pytest.approx(1.0)
    assert worse["pose"]["mean_distance"] > 0 and worse["depth"]["depth_correlation"] < 0.99
    assert script.main(["--input", str(same), "--output", str(same), "--depth", str(tmp_path / "none")]) == 2
    error = capsys.readouterr().err
    assert "--depth: no model at" in error and "--only control" in error and "\n" not in error.strip()


def test_control_check_boxes_the_person_with_clipseg(tmp_path, tiny_bundle, capsys, monkeypatch):
    """--person: each clip's keypoints in its CLIPSeg person box (a fixed blob here, as in the run's test above)."""
    from magicme.segmentation import ClipSegSegmenter

    blob = np.zeros((8, 64, 64), dtype=np.float32)
    blob[:, 8:40, 20:44] = 0.9
    monkeypatch.setattr(ClipSegSegmenter, "probabilities", lambda self, images, prompt: blob)
    script = control_check()
    clip = save_gif(tmp_path / "clip.gif", moving_square(8, 64))
    other = save_gif(tmp_path / "other.gif", moving_square(8, 64, seed=4)[:, ::-1])
    source, output = read_video(clip), read_video(other)
    pose = tiny_bundle["pose_model"]

    def scores(boxes):
        return pose_agreement(*estimate_keypoints(source, pose, boxes=boxes), *estimate_keypoints(output, pose,
                                                                                                  boxes=boxes))

    args = ["--input", str(clip), "--output", str(other), "--pose", str(pose)]
    assert script.main([*args, "--person", str(tiny_bundle["clipseg"])]) == 0
    boxed = json.loads(capsys.readouterr().out)["pose"]
    assert boxed == pytest.approx(scores([[20.0, 8.0, 24.0, 32.0]] * 8))
    assert boxed != pytest.approx(scores(None))
    assert script.main([*args[:4], "--depth", str(tiny_bundle["depth_model"]), "--person",
                        str(tiny_bundle["clipseg"])]) == 2
    assert "--person: boxes the person for --pose" in capsys.readouterr().err
