"""Face VCD, Tiled VCD and video editing: exact box/tile/paste math, the stages with a recording identity-or-shift
denoiser (MagicPipeline's `video_to_video` interface), dlib on a real photo, and the stages on the tiny bundle."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from magicme.errors import ConfigError
from magicme.pipeline import denoising_steps
from magicme.vcd import (
    prepare_input_video, run_edit_stage, run_face_stage, run_tiled_stage, validate_edit_config,
    validate_face_config, validate_tiled_config,
)
from magicme.vcd.boxes import crop_box, fit_square, grow, iou, link_tracks, square, union
from magicme.vcd.detect import ClipSegDetector, make_detector, mask_boxes
from magicme.vcd.paste import feather_mask, resize_video
from magicme.vcd.tiles import (
    blend_tiles, border_gradient_ratio, seam_ratio, tile_grid, tile_layout, tile_weights,
)
from magicme.vcd.upscale import upscale_video, upscaled_size
from magicme.video_io import write_video

ASTRONAUT_FACE = (175, 76, 266, 167)  # dlib's box (inclusive corners 175,76–265,166) as a half-open box


class RecordingPipe:
    """MagicPipeline's `video_to_video` interface with a known denoiser: records each call, returns f(video)."""

    device = torch.device("cpu")

    def __init__(self, change=lambda video: video):
        self.change, self.calls = change, []

    def video_to_video(self, video, prompt, negative_prompt, generator, *, gamma, strength, steps, guidance_scale,
                       progress=True):
        self.calls.append({"shape": video.shape, "prompt": prompt, "gamma": gamma, "strength": strength,
                           "steps": steps, "guidance_scale": guidance_scale})
        return self.change(video.copy())


def fixed_detector(*per_frame):
    return lambda video: [list(per_frame[i % len(per_frame)]) for i in range(len(video))]


RUN = {"steps": 10, "guidance_scale": 7.5, "gamma": 0.1}


@pytest.fixture(scope="module")
def astronaut():
    from skimage.data import astronaut

    return astronaut().astype(np.float32) / 255.0


# --- box geometry and tracks ---

def test_box_geometry():
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert union([(10, 10, 20, 20), (30, 5, 40, 15)]) == (10, 5, 40, 20)
    assert grow((10, 10, 20, 30), 3.0) == (0, -10, 30, 50)
    assert square((0, -10, 30, 50)) == (-15, -10, 45, 50)


@pytest.mark.parametrize("box, expected", [
    ((20, 20, 60, 60), (20, 20, 60, 60)),        # inside: unchanged
    ((-10, 5, 30, 45), (0, 5, 40, 45)),          # past the left edge: shifted right, same size
    ((80, 60, 120, 100), (60, 40, 100, 80)),     # past the bottom-right corner: shifted up-left
    ((-50, -50, 150, 150), (10, 0, 90, 80)),     # larger than the frame: shrunk to the short side, centred
])
def test_fit_square_shifts_inside_before_shrinking(box, expected):
    assert fit_square(box, 100, 80) == expected


def test_crop_box_is_grown_square_union_of_a_moving_face():
    # union (10,10,40,20) → ×3 about (25,15): 90×30 → square 90 → shifted inside a 200×200 frame
    assert crop_box([(10, 10, 20, 20), (30, 10, 40, 20)], 3.0, 200, 200) == (0, 0, 90, 90)
    assert crop_box([(90, 90, 110, 110)], 3.0, 200, 200) == (70, 70, 130, 130)


def test_link_tracks():
    a = [(10, 10, 30, 30), (12, 10, 32, 30), (18, 16, 26, 24)]  # face A, then shrinking (IoU 0.16, same centre)
    b = [(100, 100, 140, 140), (101, 100, 141, 140), (103, 101, 143, 141)]
    c = (40, 10, 60, 30)  # one face width right of A: too far for IoU and for the centre rule
    tracks = link_tracks([[a[0], b[0]], [b[1], a[1]], [a[2], b[2], c]], min_iou=0.3)
    assert len(tracks) == 3
    by_first = {tuple(track[min(track)]): track for track in tracks}
    assert by_first[a[0]] == {0: a[0], 1: a[1], 2: a[2]}
    assert by_first[b[0]] == {0: b[0], 1: b[1], 2: b[2]}
    assert by_first[c] == {2: c}
    assert link_tracks([[(0, 0, 10, 10)], [(4, 0, 14, 10)]], min_iou=0.9) == [{0: (0, 0, 10, 10), 1: (4, 0, 14, 10)}]
    # two boxes in the same frame never join one track
    assert len(link_tracks([[(0, 0, 10, 10), (1, 1, 11, 11)]])) == 2


# --- detectors ---

def test_mask_boxes_connected_regions_and_min_size():
    mask = np.zeros((50, 60), bool)
    mask[5:20, 10:30] = True
    mask[30:34, 40:44] = True  # 4 px: dropped at min_size 5
    mask[40:48, 0:9] = True
    assert mask_boxes(mask, min_size=5) == [(10.0, 5.0, 30.0, 20.0), (0.0, 40.0, 9.0, 48.0)]


def test_clipseg_detector_thresholds_a_probabilities_callable():
    prompts = []

    def probabilities(images, prompt):
        prompts.append((len(images), prompt))
        n, h, w, _ = images.shape
        probs = np.zeros((n, h, w), np.float32)
        probs[:, 8:24, 16:40] = 0.9
        probs[:, 30:40, 2:12] = 0.3  # below the threshold
        return probs

    detections = ClipSegDetector(probabilities, "face", threshold=0.5, min_size=4, batch=2)(np.zeros((3, 48, 48, 3)))
    assert detections == [[(16.0, 8.0, 40.0, 24.0)]] * 3
    assert prompts == [(2, "face"), (1, "face")]


def test_clipseg_detector_loads_the_segmenter_from_files(tiny_bundle):
    section = validate_face_config({"detector": "clipseg", "clipseg_model": str(tiny_bundle["clipseg"])})
    detections = make_detector(section)(np.random.default_rng(0).random((2, 64, 64, 3), dtype=np.float32))
    assert len(detections) == 2 and all(isinstance(boxes, list) for boxes in detections)


def test_dlib_finds_the_astronaut_face_and_the_crop_contains_it(astronaut):
    video = np.stack([astronaut, astronaut])
    detect = make_detector(validate_face_config({"detector": "dlib"}))
    detections = detect(video)
    for boxes in detections:
        assert max(iou(box, ASTRONAUT_FACE) for box in boxes) > 0.9
    tracks = link_tracks(detections)
    face = next(t for t in tracks if iou(t[0], ASTRONAUT_FACE) > 0.9)
    assert len(face) == 2
    x0, y0, x1, y1 = crop_box(list(face.values()), 3.0, 512, 512)
    assert x1 - x0 == y1 - y0 == 273 and x0 <= 175 and y0 <= 76 and x1 >= 266 and y1 >= 167


# --- paste and the face stage ---

def test_feather_mask():
    mask = feather_mask(10, 12, (0, 2, 9, 8), 3)
    assert mask.shape == (10, 12)
    assert np.all(mask[:2] == 0) and np.all(mask[8:] == 0) and np.all(mask[:, 9:] == 0)
    assert mask[4, 0] == pytest.approx(2.5 / 3)     # 2.5 px from the top edge; the frame edge is not feathered
    assert mask[2, 4] == pytest.approx(0.5 / 3) and mask[5, 7] == pytest.approx(1.5 / 3)
    assert np.all(feather_mask(10, 12, (2, 2, 9, 8), 0)[2:8, 2:9] == 1)


FACE = {"detector": "dlib", "crop_factor": 2.0, "size": 48, "feather": 5}


def test_face_stage_identity_denoiser_changes_nothing():
    video = np.random.default_rng(0).random((3, 96, 80, 3), dtype=np.float32)
    pipe = RecordingPipe()
    out, info = run_face_stage(pipe, video, "p", "n", torch.Generator(), FACE, **RUN,
                               detector=fixed_detector([(30, 40, 54, 64)]))
    assert np.array_equal(out, video)
    assert info["faces"] == 1 and not info["passed_through"] and info["crops"] == [[18, 28, 66, 76]]
    assert pipe.calls == [{"shape": (3, 48, 48, 3), "prompt": "p", "gamma": 0.1, "strength": 0.8, "steps": 10,
                           "guidance_scale": 7.5}]


def test_face_stage_pastes_exactly_inside_and_nothing_outside_the_face():
    video = np.random.default_rng(1).random((2, 96, 80, 3), dtype=np.float32) * 0.5
    out, info = run_face_stage(RecordingPipe(lambda v: v + 0.25), video, "p", "", torch.Generator(), FACE, **RUN,
                               detector=fixed_detector([(30, 40, 53, 64)], [(31, 40, 54, 63)]))
    x0, y0, x1, y1 = info["regions"][0]
    assert (x0, y0, x1, y1) == (30, 40, 54, 64)  # union of the two frames' boxes; crop 48 = size: no resizing
    outside = np.ones((96, 80), bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(out[:, outside], video[:, outside])
    core = (slice(None), slice(y0 + 5, y1 - 5), slice(x0 + 5, x1 - 5))
    assert np.allclose(out[core], video[core] + 0.25, atol=1e-6)
    band = out[:, y0, x0 + 5:x1 - 5] - video[:, y0, x0 + 5:x1 - 5]
    assert np.allclose(band, 0.25 * 0.5 / 5, atol=1e-6)


def test_face_stage_resizes_crops_to_the_stage_size_and_back(astronaut):
    video = np.stack([astronaut, astronaut[:, ::-1].copy()])
    pipe = RecordingPipe()
    section = {"detector": "dlib", "size": 64, "strength": 0.5, "steps": 4, "gamma": 0.2}
    out, info = run_face_stage(pipe, video, "p", "", torch.Generator(), section, **RUN)
    assert info["faces"] >= 2  # the face and its mirror image are two tracks (plus dlib's box on the suit patch)
    assert all(call["shape"] == (2, 64, 64, 3) and call["strength"] == 0.5 and call["steps"] == 4
               and call["gamma"] == 0.2 and call["guidance_scale"] == 7.5 for call in pipe.calls)
    changed = np.any(out != video, axis=(0, 3))
    inside = np.zeros_like(changed)
    for x0, y0, x1, y1 in info["regions"]:
        inside[y0:y1, x0:x1] = True
    assert not np.any(changed & ~inside)
    assert np.abs(out - video).mean() < 0.01  # Lanczos down to 64 and back only blurs the faces


def test_face_stage_without_a_face_passes_through(caplog):
    video = np.random.default_rng(2).random((2, 64, 64, 3), dtype=np.float32)
    pipe = RecordingPipe()
    with caplog.at_level(logging.WARNING, logger="magicme"):
        out, info = run_face_stage(pipe, video, "p", "", torch.Generator(), FACE, **RUN, detector=fixed_detector([]))
    assert np.array_equal(out, video) and info["passed_through"] and info["faces"] == 0 and pipe.calls == []
    assert "no face" in caplog.text


def test_stage_needs_the_runs_values_where_its_own_are_null():
    with pytest.raises(ValueError, match="steps"):
        run_face_stage(RecordingPipe(), np.zeros((1, 64, 64, 3), np.float32), "p", "", torch.Generator(), FACE,
                       guidance_scale=7.5, gamma=0.1, detector=fixed_detector([]))


# --- tiles and the tiled stage ---

@pytest.mark.parametrize("length, tile, overlap, expected", [
    (1024, 512, 64, (544, [0, 480])),
    (1536, 512, 64, (560, [0, 488, 976])),
    (128, 64, 16, (72, [0, 56])),
    (512, 512, 64, (512, [0])),
    (200, 512, 64, (200, [0])),
])
def test_tile_layout_covers_the_axis_with_the_overlap(length, tile, overlap, expected):
    size, starts = tile_layout(length, tile, overlap)
    assert (size, starts) == expected
    assert starts[0] == 0 and starts[-1] + size == length and size % 8 == 0
    assert all(prev + size - nxt >= overlap for prev, nxt in zip(starts, starts[1:]))


@pytest.mark.parametrize("height, width, tile, overlap", [(1024, 1536, 512, 64), (128, 64, 64, 16), (96, 200, 64, 0)])
def test_tile_weights_sum_to_one(height, width, tile, overlap):
    total = np.zeros((height, width))
    tiles, weights = tile_grid(height, width, tile, overlap), tile_weights(height, width, tile, overlap)
    for (y, x, h, w), weight in zip(tiles, weights):
        assert weight.shape == (h, w) and weight.min() >= 0
        total[y:y + h, x:x + w] += weight
    assert np.abs(total - 1).max() < 1e-6


def test_tiled_stage_identity_denoiser_reproduces_the_upscaled_video(astronaut):
    video = resize_video(astronaut[None].repeat(2, 0), 96, 96)
    pipe = RecordingPipe()
    section = {"tile": 64, "overlap": 16}
    out, info = run_tiled_stage(pipe, video, "p", "", torch.Generator(), section, **RUN)
    reference = upscale_video(video, 2.0)
    assert out.shape == reference.shape == (2, 192, 192, 3) and (info["height"], info["width"]) == (192, 192)
    assert np.abs(out - reference).max() < 1e-6
    assert len(pipe.calls) == 9 and all(c["shape"] == (2, 80, 80, 3) and c["strength"] == 0.2 for c in pipe.calls)
    assert seam_ratio(out, reference, 64, 16) == pytest.approx(1.0, abs=1e-4)


def test_feathered_blending_hides_disagreeing_tiles_a_hard_stitch_does_not(astronaut):
    video = resize_video(astronaut[None], 256, 256)
    tiles, weights = tile_grid(256, 256, 128, 32), tile_weights(256, 256, 128, 32)
    offsets = np.random.default_rng(0).uniform(-0.1, 0.1, (len(tiles), 3)).astype(np.float32)  # per-tile drift
    outputs = [video[:, y:y + h, x:x + w] + o for (y, x, h, w), o in zip(tiles, offsets)]
    feathered = blend_tiles(outputs, tiles, weights, 256, 256)
    hard = blend_tiles(outputs, tiles, [(w > 0.5).astype(np.float32) for w in weights], 256, 256)
    assert seam_ratio(feathered, video, 128, 32) < 1.01
    assert seam_ratio(hard, video, 128, 32) > 1.1
    assert border_gradient_ratio(video, 128, 32) > 0  # the reference's own figure is a real number


def test_upscale_sizes_and_lanczos(astronaut):
    assert upscaled_size(64, 96, 2.0) == (128, 192) and upscaled_size(60, 100, 1.5) == (88, 152)
    video = resize_video(astronaut[None], 64, 64)
    up = upscale_video(video, 2.0)
    assert up.shape == (1, 128, 128, 3) and up.dtype == np.float32 and 0 <= up.min() and up.max() <= 1
    assert np.abs(resize_video(up, 64, 64) - video).mean() < 0.02


# --- editing an input video ---

def write_frames(folder, values, height=20, width=40):
    folder.mkdir()
    for i, value in enumerate(values):
        frame = np.full((height, width, 3), value, np.uint8)
        frame[:, width // 2 - 4:width // 2 + 4] = 255  # a white bar in the middle
        Image.fromarray(frame).save(folder / f"{i:03d}.png")
    return folder


def test_prepare_input_video_subsamples_and_centre_crops(tmp_path):
    folder = write_frames(tmp_path / "clip", [0, 20, 40, 60, 80, 100])
    video = prepare_input_video(folder, frames=3, height=16, width=16)
    assert video.shape == (3, 16, 16, 3)
    assert np.allclose(video[:, 0, 0, 0] * 255, [0, 40, 100], atol=1)  # frames 0, 2, 5 of 6
    assert np.all(video[:, :, 6:10] > 0.9)  # the bar stays in the centre (40 px wide → 32 → centre 16)
    assert prepare_input_video(folder, frames=6, height=24, width=8).shape == (6, 24, 8, 3)


def test_prepare_input_video_reads_mp4_and_gif(tmp_path):
    clip = np.random.default_rng(0).random((5, 32, 48, 3), dtype=np.float32)
    write_video(tmp_path / "clip", clip, fps=4)
    for suffix in ("mp4", "gif"):
        assert prepare_input_video(tmp_path / f"clip.{suffix}", 4, 32, 32).shape == (4, 32, 32, 3)


@pytest.mark.parametrize("case, key", [
    ("missing", "input_video"), ("corrupt", "input_video"), ("few", "input_video"), ("height", "height"),
    ("width", "width"),
])
def test_prepare_input_video_bad_inputs(tmp_path, case, key):
    path = write_frames(tmp_path / "clip", [0, 50])
    frames, height, width = 2, 16, 16
    if case == "missing":
        path = tmp_path / "nope.mp4"
    elif case == "corrupt":
        path = tmp_path / "bad.mp4"
        path.write_bytes(b"not a video at all" * 10)
    elif case == "few":
        frames = 3
    elif case == "height":
        height = 20
    else:
        width = 0
    with pytest.raises(ConfigError, match=f"^{key}: "):
        prepare_input_video(path, frames, height, width)


# --- config checks (before any model loads) ---

@pytest.mark.parametrize("validate, section, key", [
    (validate_face_config, {"detector": "yolo"}, "face.detector"),
    (validate_face_config, {"detector": "dlib", "strength": 1.5}, "face.strength"),
    (validate_face_config, {"detector": "dlib", "strength": "much"}, "face.strength"),
    (validate_face_config, {"detector": "dlib", "size": 500}, "face.size"),
    (validate_face_config, {"detector": "dlib", "crop_factor": 0.5}, "face.crop_factor"),
    (validate_face_config, {"detector": "dlib", "steps": 0}, "face.steps"),
    (validate_face_config, {"detector": "dlib", "gamma": 1.0}, "face.gamma"),
    (validate_face_config, {"detector": "dlib", "sise": 512}, "face.sise"),
    (validate_face_config, {"clipseg_model": "no/such/folder"}, "face.clipseg_model"),
    (validate_tiled_config, {"strength": -0.1}, "tiled.strength"),
    (validate_tiled_config, {"tile": 100}, "tiled.tile"),
    (validate_tiled_config, {"tile": 64, "overlap": 40}, "tiled.overlap"),
    (validate_tiled_config, {"scale": 0.5}, "tiled.scale"),
    (validate_tiled_config, {"upscaler": "no/such/4x.pth"}, "tiled.upscaler"),
    (validate_edit_config, {"strength": 2}, "edit.strength"),
])
def test_bad_stage_settings_name_the_key(validate, section, key):
    with pytest.raises(ConfigError, match=f"^{key}: "):
        validate(section)


def test_upscaler_model_without_spandrel_is_a_clear_error(tmp_path):
    model = tmp_path / "4x.pth"
    model.write_bytes(b"weights")
    try:
        import spandrel  # noqa: F401 - only checking whether it is installed
    except ImportError:
        with pytest.raises(ConfigError, match="^tiled.upscaler: .*spandrel"):
            validate_tiled_config({"upscaler": str(model)})
    else:
        assert validate_tiled_config({"upscaler": str(model)}).upscaler == str(model)


def test_defaults_follow_the_original_graph():
    face, tiled, edit = validate_face_config({"detector": "dlib"}), validate_tiled_config(), validate_edit_config()
    assert (face.crop_factor, face.size, face.strength, face.feather, face.clipseg_prompt) == (3.0, 512, 0.8, 5, "face")
    assert (tiled.scale, tiled.tile, tiled.strength, tiled.upscaler) == (2.0, 512, 0.2, "lanczos")
    assert edit.strength == 0.6


# --- the stages on the tiny random-weight pipeline ---

def count_unet_calls(pipe, monkeypatch) -> list:
    calls = []
    forward = pipe.v2v.unet.forward
    monkeypatch.setattr(pipe.v2v.unet, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    return calls


def test_stage_strengths_on_the_tiny_pipeline(tiny_pipeline, monkeypatch):
    video = np.random.default_rng(0).random((2, 64, 64, 3), dtype=np.float32)
    run = {"steps": 8, "guidance_scale": 7.5, "gamma": 0.1}
    calls = count_unet_calls(tiny_pipeline, monkeypatch)
    face = {**FACE, "size": 32, "strength": 0.0}
    out, _ = run_face_stage(tiny_pipeline, video, "p", "", torch.Generator(), face, **run,
                            detector=fixed_detector([(24, 24, 40, 40)]))
    assert np.array_equal(out, video) and calls == []
    out, info = run_tiled_stage(tiny_pipeline, video, "p", "", torch.Generator().manual_seed(0),
                                {"tile": 64, "overlap": 16, "strength": 0.3}, **run)
    assert len(calls) == len(info["tiles"]) * denoising_steps(0.3, 8) == 4 * 2
    assert out.shape == (2, 128, 128, 3)


def test_t2v_face_tiled_end_to_end_on_the_tiny_pipeline(tiny_pipeline):
    generator = torch.Generator().manual_seed(0)
    prompt = "a photo of embedding:tinyperson man"
    kwargs = {"steps": 2, "guidance_scale": 7.5, "gamma": 0.1}
    video = tiny_pipeline.text_to_video(prompt, "", generator, frames=2, height=64, width=64, progress=False,
                                        **kwargs)
    section = {**FACE, "crop_factor": 3.0, "size": 64}
    face, info = run_face_stage(tiny_pipeline, video, prompt, "", generator, section, **kwargs,
                                detector=fixed_detector([(24, 20, 40, 36)]))
    assert face.shape == video.shape and info["faces"] == 1 and info["crops"] == [[8, 4, 56, 52]]
    x0, y0, x1, y1 = info["regions"][0]
    assert not np.array_equal(face[:, y0:y1, x0:x1], video[:, y0:y1, x0:x1])
    assert np.array_equal(face[:, :y0], video[:, :y0]) and np.array_equal(face[:, :, x1:], video[:, :, x1:])
    tiled, info = run_tiled_stage(tiny_pipeline, face, prompt, "", generator, {"tile": 64, "overlap": 16}, **kwargs)
    assert tiled.shape == (2, 128, 128, 3) and np.isfinite(tiled).all() and 0 <= tiled.min() and tiled.max() <= 1


def test_editing_a_generated_clip_on_the_tiny_pipeline(tiny_pipeline, tmp_path, monkeypatch):
    kwargs = {"steps": 5, "guidance_scale": 7.5, "gamma": 0.1}
    clip = tiny_pipeline.text_to_video("a man", "", torch.Generator().manual_seed(3), frames=4, height=48, width=64,
                                       progress=False, **kwargs)
    files = write_video(tmp_path / "clip", clip, fps=4, formats=("mp4",))
    video = prepare_input_video(tmp_path / files["mp4"], frames=2, height=32, width=32)
    calls = count_unet_calls(tiny_pipeline, monkeypatch)
    edited, info = run_edit_stage(tiny_pipeline, video, "embedding:tinyperson man", "", torch.Generator(), {}, **kwargs)
    assert edited.shape == (2, 32, 32, 3) and len(calls) == denoising_steps(0.6, 5) == 3
    assert info["strength"] == 0.6 and not np.array_equal(edited, video)
