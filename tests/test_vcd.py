"""Face VCD, Tiled VCD and video editing: exact geometry, identity-denoiser round trips, real-face detection,
end to end on the tiny bundle, bad inputs."""

import json
import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

import sample
from magicme.faces import ClipSegFaces, DlibFaces, regions_from_probabilities
from magicme.schema import load_sample_config
from magicme.stages import STAGES, Sample
from magicme.video_io import prepare_input_video
from magicme.stages.face import refine_faces
from magicme.stages.tiled import blend_tiles
from magicme.vcd.geometry import (crop_box, feather_mask, graph_crop_box, graph_denoise_size, link_tracks,
                                  tile_weight, tile_windows, union_box)
from magicme.vcd.resize import lanczos_matrix
from magicme.vcd.resize import resize_video
from magicme.video_io import write_video
from tests.test_sampling import write_config


def identity(video, mask=None):
    return video


def test_union_crop_box_grows_squares_and_stays_in_frame():
    assert union_box([(10, 20, 30, 40), (12, 18, 35, 38)]) == (10, 18, 35, 40)
    assert crop_box((40, 40, 60, 50), 3.0, 200, 200) == (20, 15, 80, 75)  # 20 px face side → 60 px square
    assert crop_box((0, 0, 20, 20), 3.0, 100, 100) == (0, 0, 60, 60)  # moved inside at the top-left corner
    assert crop_box((90, 80, 100, 100), 3.0, 100, 120) == (60, 40, 120, 100)  # moved inside at the bottom-right
    assert crop_box((10, 10, 90, 60), 3.0, 100, 120) == (0, 0, 100, 100)  # shrunk to the frame's short side


def test_graph_crop_box_is_the_impact_packs_region_on_a_non_square_frame():
    """The Impact Pack's make_crop_region on a 320 × 192 frame, by hand: the face box × crop_factor in width and
    height separately, centred, corner truncated to whole pixels, moved into the frame and cut to it."""
    # 33 × 51 face at (101, 37), factor 2.5 → 82.5 × 127.5 around (117.5, 62.5):
    # x0 = int(117.5 − 41.25) = 76, x1 = int(76 + 82.5) = 158; y0 = int(62.5 − 63.75) = int(−1.25) = −1 < 0 → 0,
    # y1 = int(min(192, 127.5)) = 127: an 82 × 127 crop, as tall as the face is
    assert graph_crop_box((101, 37, 134, 88), 2.5, 192, 320) == (76, 0, 158, 127)
    # 30 × 30 face at the right edge, factor 3 → 90: x0 = int(295 − 45) = 250, 250 + 90 > 320 → (230, 320)
    assert graph_crop_box((280, 100, 310, 130), 3.0, 192, 320) == (230, 70, 320, 160)
    # 120 × 160 face → 360 × 480, wider and taller than the frame: cut to the frame
    assert graph_crop_box((100, 20, 220, 180), 3.0, 192, 320) == (0, 0, 320, 192)
    assert crop_box((101, 37, 134, 88), 2.5, 192, 320) == (54, 0, 182, 128)  # square: 2.5 × 51 → 128, round(53.5)


def test_graph_denoise_size_is_the_impact_packs_scaling_on_the_latent_grid():
    """enhance_detail_for_animatediff with guide_size_for = crop_region, by hand, then each side rounded down
    to a multiple of 8."""
    # 82 × 127 crop, guide 512: × 512/82 → 512 × int(792.98) = 792 > 512 → factor × 512/792:
    # 512 · 512/792 = 330.99 → 330, 127 · 512/82 · 512/792 = 512.63 → 512; grid → 328 × 512 (aspect kept)
    assert graph_denoise_size(82, 127, 512, 512) == (328, 512)
    assert graph_denoise_size(82, 127, 512, 1024) == (512, 792)  # a higher cap: the shorter side is 512
    # 64 × 200: × 8 → 512 × 1600 → × 512/1600: 163.84 × 512 → 163 → 160 × 512
    assert graph_denoise_size(64, 200, 512, 512) == (160, 512)
    # 900 × 768: factor 512/768 ≤ 1, so no scaling (the face is never shrunk): 900 → 896 on the grid
    assert graph_denoise_size(900, 768, 512, 512) == (896, 768)
    assert graph_denoise_size(48, 48, 48, 512) == (48, 48)  # factor exactly 1: native size
    assert graph_denoise_size(3, 3, 4, 512) == (8, 8)  # at least one latent cell


def test_crop_shape_square_keeps_the_square_crop_at_size():
    video = np.random.default_rng(3).random((2, 192, 320, 3), dtype=np.float32)
    seen = []

    def record(crop, mask):
        seen.append(crop.shape[1:3])
        return crop

    tracks = [[(101, 37, 134, 88)]]
    _, graph = refine_faces(video, tracks, record, crop_factor=2.5, size=64, feather=5)
    _, square = refine_faces(video, tracks, record, crop_factor=2.5, size=64, feather=5, crop_shape="square")
    # graph: the 82 × 127 crop's shorter side is more than 64: not shrunk, its own size on the grid, 80 × 120;
    # square: the 128² crop shrunk to 64 × 64
    assert graph == [[80, 120]] and square == [[64, 64]] and seen == [(120, 80), (64, 64)]


def test_link_tracks_follows_moving_faces():
    frames = [[(10, 10, 30, 30), (70, 10, 90, 30)], [(12, 11, 32, 31), (71, 12, 91, 32)], [(14, 12, 34, 32)]]
    tracks = link_tracks(frames)
    assert sorted(len(t) for t in tracks) == [2, 3]
    assert link_tracks([[], []]) == []


def test_feather_mask_is_zero_outside_the_region_and_ramps_inside():
    mask = feather_mask(20, 30, (5, 4, 25, 16), feather=3)
    assert mask[:4].max() == 0 and mask[16:].max() == 0 and mask[:, :5].max() == 0 and mask[:, 25:].max() == 0
    assert mask[10, 15] == 1.0 and 0 < mask[4, 15] < mask[5, 15] < mask[6, 15] <= 1.0


def test_face_paste_with_identity_denoiser_leaves_everything_outside_the_face_exact():
    rng = np.random.default_rng(0)
    video = rng.random((3, 96, 96, 3), dtype=np.float32)
    tracks = [[(40, 30, 56, 46), (41, 31, 57, 47)]]
    out, sizes = refine_faces(video, tracks, identity, crop_factor=3.0, size=64, feather=5)
    face = union_box(tracks[0])
    outside = np.ones((96, 96), bool)
    outside[face[1]:face[3], face[0]:face[2]] = False
    assert np.array_equal(out[:, outside], video[:, outside])
    # a crop already at the stage size is not resampled: an identity denoiser then changes nothing at all
    exact, _ = refine_faces(video, tracks, identity, crop_factor=48 / 17, size=48, feather=5)
    assert np.allclose(exact, video, atol=1e-6)


def test_tiles_cover_the_frame_and_blend_back_exactly_without_seams():
    assert tile_windows(1024, 512, 32) == [(0, 544), (480, 1024)]  # 2x of 512: 4 tiles, as the paper
    windows = tile_windows(1000, 384, 16)
    assert windows[0][0] == 0 and windows[-1][1] == 1000 and len(windows) == 3
    assert all(a[1] - b[0] >= 32 for a, b in zip(windows, windows[1:]))
    assert tile_windows(300, 512, 32) == [(0, 300)]
    assert tile_weight(64, 64, 16).min() > 0
    video = np.random.default_rng(1).random((2, 200, 168, 3), dtype=np.float32)
    assert np.allclose(blend_tiles(video, 64, 8, identity), video, atol=1e-6)
    # a denoiser that shifts each tile by a different constant: the blend cross-fades (no jump at tile borders)
    offsets = iter(np.linspace(0.0, 0.2, 100))
    shifted = blend_tiles(np.zeros((1, 128, 128, 3), np.float32), 64, 16, lambda t: t + next(offsets))
    assert np.abs(np.diff(shifted[0, 64, :, 0])).max() < 0.02


def test_dlib_finds_the_astronaut_and_the_crop_box_contains_the_face():
    frame = skdata.astronaut().astype(np.float32) / 255.0
    video = np.stack([frame, np.roll(frame, 3, axis=1), np.roll(frame, 6, axis=1)])
    tracks = link_tracks(DlibFaces(min_face=10).boxes(video))
    face_track = max(tracks, key=len)
    face = union_box(face_track)
    assert len(face_track) == 3
    assert abs(face[0] - 175) < 15 and abs(face[1] - 76) < 15 and abs(face[2] - 271) < 15 and abs(face[3] - 166) < 15
    box = crop_box(face, 3.0, 512, 512)
    assert box[0] <= face[0] and box[1] <= face[1] and box[2] >= face[2] and box[3] >= face[3]
    assert box[2] - box[0] == box[3] - box[1]


def test_prepare_input_video_resizes_crops_and_checks_frames(tmp_path):
    write_video(tmp_path / "clip", np.random.default_rng(0).random((5, 40, 80, 3), dtype=np.float32), 8, ("gif",))
    video = prepare_input_video(str(tmp_path / "clip.gif"), 4, 32, 32)
    assert video.shape == (4, 32, 32, 3)
    with pytest.raises(Exception, match="input_video: .* has 5 frames; the config asks for 8"):
        prepare_input_video(str(tmp_path / "clip.gif"), 8, 32, 32)
    assert resize_video(video, 16, 48).shape == (4, 16, 48, 3)


def test_t2v_face_tiled_end_to_end_then_edit_the_result(tmp_path, tiny_bundle):
    stages = ["--quiet", "stages=[t2v,face,tiled]", f"face.clipseg_model={tiny_bundle['clipseg']}",
              "face.size=32", "face.threshold=0.5", "tiled.tile=64", "tiled.padding=8", "prompts=[<tinyperson> man]"]
    assert sample.main(["--config", str(write_config(tmp_path, tiny_bundle)), *stages]) == 0
    (run_dir,) = (tmp_path / "out").iterdir()
    records = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in records] == ["t2v", "face", "tiled"]
    t2v, _, tiled = records
    assert (tiled["frames"], tiled["height"], tiled["width"]) == (4, 96, 128)
    assert (tiled["height"], tiled["width"]) == (2 * t2v["height"], 2 * t2v["width"])
    assert tiled["files"]["mp4"].endswith("_tiled.mp4") and all(r["seconds"] > 0 for r in records)

    edit_out = tmp_path / "edit"
    assert sample.main(["--config", str(write_config(tmp_path, tiny_bundle)), "--quiet", "prompts=[<tinyperson> man]",
                        f"input_video={run_dir / t2v['files']['mp4']}", f"output_dir={edit_out}"]) == 0
    (edit_dir,) = edit_out.iterdir()
    (record,) = [json.loads(line) for line in (edit_dir / "samples.jsonl").read_text().splitlines()]
    assert record["stage"] == "edit" and (record["frames"], record["height"], record["width"]) == (4, 48, 64)


@pytest.mark.parametrize("overrides,message", [
    (["stages=[t2v,sharpen]"], "stages: 'sharpen' is not one of t2v, edit, face, tiled"),
    (["stages=[t2v,face]", "face.detector=yolo"], "face.detector: 'yolo' is not one of clipseg, dlib"),
    (["stages=[t2v,face]", "face.size=60", "face.detector=dlib"], "face.size: 60 must be a positive multiple of 8"),
    (["stages=[t2v,face]", "face.crop_shape=round", "face.detector=dlib"],
     "face.crop_shape: 'round' is not one of graph, square"),
    (["stages=[t2v,face]", "face.max_size=4", "face.detector=dlib"], "face.max_size: 4 must be >= 8"),
    (["stages=[t2v,face]", "face.size=1024", "face.detector=dlib"],
     "face.max_size: 512 is less than face.size 1024, so no crop could reach its guide size; set face.max_size >= 1024"),
    (["stages=[t2v,face]", "face.clipseg_model=nowhere"], "face.clipseg_model: no CLIPSeg model (config.json + weights) in nowhere"),
    (["stages=[t2v,tiled]", "tiled.strength=1.5"], "tiled.strength: 1.5 not in [0, 1]"),
    (["stages=[t2v,tiled]", "tiled.upscaler=missing.pth"], "tiled.upscaler: missing.pth is neither"),
    (["stages=[t2v,tiled,tiled]"], "repeats a stage"),
    (["input_video=nowhere.mp4"], "input_video: nowhere.mp4 not found"),
])
def test_bad_stage_configs(tmp_path, tiny_bundle, capsys, overrides, message):
    assert sample.main(["--config", str(write_config(tmp_path, tiny_bundle)), "--quiet", *overrides]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_corrupt_or_short_input_video_fails_before_anything_is_written(tmp_path, tiny_bundle, capsys):
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x01 not a video")
    assert sample.main(["--config", str(write_config(tmp_path, tiny_bundle)), "--quiet",
                        f"input_video={tmp_path / 'broken.mp4'}"]) == 2
    assert "broken.mp4: cannot decode this video" in capsys.readouterr().err
    write_video(tmp_path / "short", np.zeros((2, 48, 64, 3), np.float32), 8, ("mp4",))
    assert sample.main(["--config", str(write_config(tmp_path, tiny_bundle)), "--quiet",
                        f"input_video={tmp_path / 'short.mp4'}"]) == 2
    assert "has 2 frames; the config asks for 4" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def pillow_lanczos(video: np.ndarray, height: int, width: int) -> np.ndarray:
    return np.stack([np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(f[..., c])).resize(
        (width, height), Image.Resampling.LANCZOS)) for c in range(3)], axis=-1) for f in video])


@pytest.mark.parametrize("size, new", [((64, 64), (128, 128)), ((120, 120), (64, 64)), ((40, 80), (33, 70)),
                                       ((96, 100), (48, 41))])
def test_lanczos_resize_matches_pillow(size, new):
    photo = skdata.astronaut().astype(np.float32) / 255.0
    video = np.stack([photo[:size[0], :size[1]], photo[200:200 + size[0], 150:150 + size[1]]])
    resized = resize_video(video, *new)
    assert np.abs(resized - np.clip(pillow_lanczos(video, *new), 0, 1)).max() < 1e-5
    assert resized.flags["C_CONTIGUOUS"]
    assert np.allclose(lanczos_matrix(size[1], new[1]).sum(axis=1), 1.0)


def test_face_paste_is_exact_inside_the_face_and_outside_it():
    video = np.random.default_rng(2).random((2, 96, 96, 3), dtype=np.float32) * 0.5
    tracks = [[(40, 30, 57, 47)]]  # 17 px face × 48/17 = a 48 px crop = the stage size: no resampling
    out, _ = refine_faces(video, tracks, lambda crop, mask: crop + 0.25, crop_factor=48 / 17, size=48,
                          feather=5)
    x0, y0, x1, y1 = tracks[0][0]
    outside = np.ones((96, 96), bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(out[:, outside], video[:, outside])
    core = (slice(None), slice(y0 + 5, y1 - 5), slice(x0 + 5, x1 - 5))
    assert np.array_equal(out[core], video[core] + np.float32(0.25))
    assert np.array_equal(refine_faces(video, tracks, identity, crop_factor=48 / 17, size=48, feather=5)[0], video)


class RecordingPipe:
    """MagicPipeline's `video_to_video` interface with an identity denoiser; records the calls."""

    device = torch.device("cpu")
    family = "sd15"
    vae_scale_factor = 8
    v2v = SimpleNamespace(scheduler=SimpleNamespace(order=1))

    def __init__(self):
        self.calls, self.shapes = [], []

    def video_to_video(self, video, prompt, negative_prompt, generator, **kwargs):
        self.calls.append(kwargs)
        self.shapes.append(video.shape[1:3])
        return video.copy()


SAMPLE = Sample(index=0, prompt="p", negative_prompt="", seed=0, gamma=0.1)


def make_stage(name: str, pipe, *overrides: str):
    """A stage as a run builds it: from a sampling config (steps 8), set up on `pipe`."""
    stage = STAGES[name](load_sample_config(None, ["steps=8", "guidance_scale=7.5", "gamma=0.1", *overrides]))
    stage.setup(pipe)
    return stage


def test_face_stage_without_a_face_passes_through_and_says_so(caplog):
    video = np.random.default_rng(3).random((2, 64, 64, 3), dtype=np.float32)
    pipe = RecordingPipe()
    with caplog.at_level(logging.WARNING, logger="magicme"):
        out, info = make_stage("face", pipe, "face.detector=dlib")(pipe, video, SAMPLE, torch.Generator())
    assert np.array_equal(out, video) and info == {"faces": 0, "passed_through": True} and pipe.calls == []
    assert "no face found" in caplog.text


@pytest.fixture(scope="module")
def astronaut_256():
    return resize_video(np.stack([skdata.astronaut().astype(np.float32) / 255.0] * 2), 256, 256)


def test_face_size_max_size_and_crop_shape_reach_the_crop(astronaut_256):
    """The stage's keys reach the crop it denoises: face.size (the guide size), face.max_size (the cap on the
    longer side) and face.crop_shape (square: size × size)."""
    pipe, sizes = RecordingPipe(), {}
    for key in ("face.max_size=1024", "face.max_size=256", "face.crop_shape=square"):
        stage = make_stage("face", pipe, "face.detector=dlib", "face.mask=box", "face.size=512", key)
        _, info = stage(pipe, astronaut_256, SAMPLE, torch.Generator())
        sizes[key] = info["denoised_at"][0]
        assert pipe.shapes[-1] == (sizes[key][1], sizes[key][0])
    x0, y0, x1, y1 = graph_crop_box(tuple(info["boxes"][0]), 3.0, 256, 256)
    assert sizes["face.max_size=1024"] == list(graph_denoise_size(x1 - x0, y1 - y0, 512, 1024))
    assert sizes["face.max_size=256"] == list(graph_denoise_size(x1 - x0, y1 - y0, 512, 256))
    assert max(sizes["face.max_size=256"]) <= 256 and min(sizes["face.max_size=1024"]) == 512
    assert sizes["face.crop_shape=square"] == [512, 512] != sizes["face.max_size=1024"]


def test_stage_strength_zero_changes_nothing_and_steps_are_the_steps_run(tiny_pipeline, astronaut_256, monkeypatch):
    calls = []
    forward = tiny_pipeline.v2v.unet.forward
    monkeypatch.setattr(tiny_pipeline.v2v.unet, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    face = make_stage("face", tiny_pipeline, "face.detector=dlib", "face.size=64", "face.strength=0")
    out, info = face(tiny_pipeline, astronaut_256, SAMPLE, torch.Generator())
    assert info == {"faces": 1, "passed_through": True}  # dlib finds the face at 256²: (88, 41)–(132, 84)
    assert np.array_equal(out, astronaut_256) and calls == []
    face.settings.strength = 0.5
    out, info = face(tiny_pipeline, astronaut_256, SAMPLE, torch.Generator().manual_seed(0))
    assert len(calls) == 8 and not info["passed_through"]  # the last 8 of a 16-step schedule
    assert not np.array_equal(out, astronaut_256)
    calls.clear()
    tiled = make_stage("tiled", tiny_pipeline, "tiled.tile=64", "tiled.padding=8", "tiled.strength=0.25")
    small = resize_video(astronaut_256, 64, 64)
    out, info = tiled(tiny_pipeline, small, SAMPLE, torch.Generator().manual_seed(0))
    assert out.shape == (2, 128, 128, 3) and len(calls) == info["tiles"] * 8 == 4 * 8


def test_dlib_detection_does_not_depend_on_memory_layout(astronaut_256):
    # the channel-planar layout torch.einsum once returned from resize_video: dlib then missed faces intermittently
    planar = np.ascontiguousarray(astronaut_256.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    assert not planar.flags["C_CONTIGUOUS"]
    for _ in range(3):
        assert DlibFaces(min_face=10).boxes(planar) == [[(88, 41, 132, 84)]] * 2


def test_clipseg_probabilities_become_one_box_per_region():
    probs = np.zeros((2, 50, 60), np.float32)
    probs[:, 5:20, 10:30] = 0.9
    probs[:, 30:34, 40:44] = 0.9  # 4 px: below min_face
    probs[1, 40:48, 0:12] = 0.6
    probs[:, 0:3, 50:60] = 0.4  # below the threshold
    boxes, masks = regions_from_probabilities(probs, 0.5, 5)
    assert boxes == [[(10, 5, 30, 20)], [(10, 5, 30, 20), (0, 40, 12, 48)]]
    expected = np.zeros((2, 50, 60), bool)
    expected[:, 5:20, 10:30] = True
    expected[1, 40:48, 0:12] = True
    assert np.array_equal(masks, expected)  # the small region is not part of the face mask either


def test_clipseg_detector_runs_from_the_model_files(tiny_bundle):
    detector = ClipSegFaces(str(tiny_bundle["clipseg"]), "face", threshold=0.5, min_face=10)
    video = np.random.default_rng(4).random((3, 64, 64, 3), dtype=np.float32)
    found = detector.boxes(video)  # random weights: any boxes, but one list per frame, inside the frame
    assert len(found) == 3 and all(0 <= b[0] < b[2] <= 64 and 0 <= b[1] < b[3] <= 64 for f in found for b in f)
