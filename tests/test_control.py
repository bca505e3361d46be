"""ControlNet conditioning (`control:`): the canny preprocessor against OpenCV and hand-computed cases, the checks
before any model loads, and the control's effect through the pipeline and run_sampling on the tiny bundle."""

import json

import numpy as np
import pytest
import torch
import yaml

from magicme.context import ContextSettings
from magicme.control.canny import canny, canny_video, hysteresis
from magicme.control.nets import Control, active
from magicme.errors import ConfigError
from magicme.naming import file_fingerprints, name_samples
from magicme.sampling import run_sampling
from magicme.schema import check_settings, load_sample_config
from magicme.video_io import prepare_input_video
from magicme.tiny.controlnet import moving_square, save_gif, save_tiny_controlnet
from magicme.video_io import read_video

PROMPT = "a photo of embedding:tinyperson man"


# ------------------------------------------------------------------------------------------------ canny


def test_canny_of_a_vertical_step_is_the_dark_side_column():
    """A 0 → 255 step between columns 2 and 3: |dx| = 4·255 on columns 2 and 3, NMS keeps the first of the two
    equal maxima (> left, ≥ right); thresholds are strict."""
    image = np.zeros((6, 6), dtype=np.uint8)
    image[:, 3:] = 255
    expected = np.zeros((6, 6), dtype=bool)
    expected[:, 2] = True
    assert np.array_equal(canny(image, 100, 200), expected)
    assert not canny(image, 100, 1020).any()  # magnitude 1020 is not > 1020: no strong pixel, no edge
    assert np.array_equal(canny(image, 1019, 1019.9), expected)  # thresholds floored: 1019 < 1020


def test_hysteresis_keeps_weak_pixels_connected_to_a_strong_one():
    candidates = np.array([[1, 1, 0, 0, 1],
                           [0, 0, 1, 0, 1],
                           [0, 0, 0, 0, 0]], dtype=bool)
    strong = np.zeros_like(candidates)
    strong[0, 0] = True
    expected = np.array([[1, 1, 0, 0, 0],
                         [0, 0, 1, 0, 0],
                         [0, 0, 0, 0, 0]], dtype=bool)  # the diagonal neighbour joins; the right group has no strong
    assert np.array_equal(hysteresis(candidates, strong), expected)


def test_canny_matches_opencv_on_a_real_image_and_random_ones():
    cv2 = pytest.importorskip("cv2", reason="opencv-python-headless (a test extra) is the reference")
    from skimage import data

    image = data.astronaut()
    for low, high in [(100, 200), (50, 120), (300, 150)]:
        assert np.array_equal(canny(image, low, high), cv2.Canny(image, low, high) > 0)
        assert np.array_equal(canny(image[..., 1], low, high), cv2.Canny(image[..., 1], low, high) > 0)
    rng = np.random.default_rng(0)
    for _ in range(20):
        image = rng.integers(0, 256, (int(rng.integers(3, 30)), int(rng.integers(3, 30)), 3), dtype=np.uint8)
        low, high = sorted(rng.uniform(0, 800, 2))
        assert np.array_equal(canny(image, low, high), cv2.Canny(image, low, high) > 0)


def test_canny_video_is_white_edges_per_frame():
    video = moving_square(3, 32)
    edges = canny_video(video, 100, 200)
    assert edges.shape == (3, 32, 32, 3) and set(np.unique(edges)) == {0.0, 1.0}
    for f in range(3):
        assert np.array_equal(edges[f, ..., 0] == 1, canny(np.round(video[f] * 255).astype(np.uint8), 100, 200))


# ------------------------------------------------------------------------------------------------ checks


def test_active_is_diffusers_controlnet_keep():
    assert [active(i, 4, 0.0, 1.0) for i in range(4)] == [True] * 4
    assert [active(i, 4, 0.5, 1.0) for i in range(4)] == [False, False, True, True]
    assert [active(i, 4, 0.0, 0.5) for i in range(4)] == [True, True, False, False]
    assert [active(i, 4, 0.25, 0.75) for i in range(4)] == [False, True, True, False]


@pytest.fixture(scope="module")
def clips(tiny_bundle, tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    square = moving_square(8, 64)
    changed = square.copy()
    changed[3] = moving_square(8, 64, seed=5)[6, :, ::-1]  # frame 3 differs (another frame, mirrored)
    return {"square": save_gif(folder / "square.gif", square), "changed": save_gif(folder / "changed.gif", changed),
            "short": save_gif(folder / "short.gif", square[:5]), "input": tiny_bundle["input_clip"]}


def config(tmp_path, tiny_bundle, **changes) -> dict:
    cfg = {"model": {"base": str(tiny_bundle["sd15"]), "motion_module": str(tiny_bundle["motion_v2"]),
                     "embeddings_dir": str(tiny_bundle["embedding"].parent), "scheduler": "ddim"},
           "prompts": [PROMPT], "seeds": [3], "steps": 3, "frames": 8, "width": 64, "height": 64,
           "save_frames": True, "formats": ["gif"], "output_dir": str(tmp_path / "out")}
    return {**cfg, **changes}


def load(tmp_path, tiny_bundle, **changes):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config(tmp_path, tiny_bundle, **changes)))
    return load_sample_config(path)


@pytest.mark.parametrize("entry, message", [
    ({"video": "V"}, r"control\[0\].model: must be the path"),
    ({"model": "missing", "video": "V"}, r"control\[0\].model: missing not found"),
    ({"model": "SD", "video": "V"}, r"control\[0\].model: .* is not a diffusers ControlNet folder"),
    ({"model": "UNET", "video": "V"}, r"control\[0\].model: .* holds a UNet2DConditionModel, not a ControlNetModel"),
    ({"model": "NET"}, r"control\[0\]: give either video .* or type and from"),
    ({"model": "NET", "video": "V", "type": "canny", "from": "input_video"}, r"not both or neither"),
    ({"model": "NET", "video": "nowhere.mp4"}, r"control\[0\].video: nowhere.mp4 not found"),
    ({"model": "NET", "video": "V", "weight": 1}, r"control\[0\]: unknown key\(s\) \['weight'\]"),
    ({"model": "NET", "type": "sketch", "from": "input_video"},
     r"control\[0\].type: 'sketch' is not a preprocessor here; available: canny, lineart, depth, pose$"),
    ({"model": "NET", "type": "canny", "from": "prompt"}, r"control\[0\].from: 'prompt' must be one of input_video"),
    ({"model": "NET", "type": "canny", "from": "input_video"}, r"control\[0\].from: input_video is not set"),
    ({"model": "NET", "video": "V", "low": 10}, r"from, preprocessor, low and high belong to a preprocessor"),
    ({"model": "NET", "video": "V", "scale": -1}, r"control\[0\].scale: -1 must be >= 0"),
    ({"model": "NET", "video": "V", "start": 0.5, "end": 0.5}, r"0 <= start < end <= 1"),
    ({"model": "NET", "video": "V", "end": "late"}, r"control\[0\].end: 'late' is not a number"),
])
def test_bad_entries_are_one_line_errors_before_loading(tmp_path, tiny_bundle, clips, entry, message):
    paths = {"NET": str(tiny_bundle["controlnet"]), "V": str(clips["square"]), "SD": str(tiny_bundle["sd15"]),
             "UNET": str(tiny_bundle["sd15"] / "unet")}
    entry = {k: paths.get(v, v) if isinstance(v, str) else v for k, v in entry.items()}
    cfg = load(tmp_path, tiny_bundle, control=[{"model": str(tiny_bundle["controlnet"]), "video": str(clips["square"])},
                                               entry])
    with pytest.raises(ConfigError, match=message.replace(r"control\[0\]", r"control\[1\]")) as error:
        check_settings(cfg)
    assert "\n" not in str(error.value)


def test_short_control_clip_fails_before_any_model_loads(tmp_path, tiny_bundle, clips):
    cfg = load(tmp_path, tiny_bundle, control=[{"model": str(tiny_bundle["controlnet"]), "video": str(clips["short"])}])

    def no_load(*args):
        raise AssertionError("a model was loaded")

    with pytest.raises(ConfigError, match=r"^control\[0\].video: .*short.gif has 5 frames; the config asks for 8"):
        run_sampling(None, cfg=cfg, progress=False, load=no_load)
    assert not (tmp_path / "out").exists()


def test_the_control_video_and_model_are_in_the_sample_name(tmp_path, tiny_bundle, clips):
    embeddings = {"tinyperson": tiny_bundle["embedding"]}

    def sample_name(cfg):
        return name_samples(cfg, check_settings(cfg), file_fingerprints(cfg, embeddings))[0].name

    def name(clip):
        return sample_name(load(tmp_path, tiny_bundle, control=[{"model": str(tiny_bundle["controlnet"]),
                                                                 "video": str(clip)}]))

    uncontrolled = sample_name(load(tmp_path, tiny_bundle))
    assert len({name(clips["square"]), name(clips["changed"]), uncontrolled}) == 3
    clips["square"].with_name("copy.gif").write_bytes(clips["square"].read_bytes())
    assert name(clips["square"].with_name("copy.gif")) == name(clips["square"])  # content, not path


# ------------------------------------------------------------------------------------------------ pipeline


@pytest.fixture(scope="module")
def fresh_net(tiny_bundle, tmp_path_factory):
    """A ControlNet straight from `from_unet`: zero convolutions."""
    return save_tiny_controlnet(tmp_path_factory.mktemp("fresh") / "controlnet", tiny_bundle["sd15"] / "unet",
                                perturb=False)


def render(pipe, control=None, frames=8, steps=4, **kwargs):
    return pipe.text_to_video(PROMPT, "", torch.Generator().manual_seed(0), gamma=0.1, frames=frames, height=64,
                              width=64, steps=steps, guidance_scale=7.5, progress=False, control=control, **kwargs)


def make_control(pipe, nets, videos, scales=None, starts=None, ends=None) -> Control:
    n = len(nets)
    return Control.load([str(x) for x in nets], videos, scales or [1.0] * n, starts or [0.0] * n,
                        ends or [1.0] * n, pipe.device, pipe.dtype)


def test_fresh_controlnet_and_scale_zero_are_bit_identical_to_no_control(tiny_pipeline, tiny_bundle, fresh_net):
    video = moving_square(8, 64)
    plain = render(tiny_pipeline)
    assert np.array_equal(render(tiny_pipeline, make_control(tiny_pipeline, [fresh_net], [video])), plain)
    perturbed = tiny_bundle["controlnet"]
    assert np.array_equal(render(tiny_pipeline, make_control(tiny_pipeline, [perturbed], [video], [0.0])), plain)
    assert not np.allclose(render(tiny_pipeline, make_control(tiny_pipeline, [perturbed], [video])), plain, atol=1e-3)


def test_start_and_end_limit_the_steps_the_controlnet_runs(tiny_pipeline, tiny_bundle):
    video = moving_square(8, 64)
    counts = {}
    for start, end in [(0.0, 1.0), (0.5, 1.0), (0.0, 0.25), (0.25, 0.75)]:
        control = make_control(tiny_pipeline, [tiny_bundle["controlnet"]], [video], starts=[start], ends=[end])
        calls = []
        control.nets.nets[0].register_forward_hook(lambda *_: calls.append(1))
        render(tiny_pipeline, control)
        counts[(start, end)] = len(calls)
    assert counts == {(0.0, 1.0): 4, (0.5, 1.0): 2, (0.0, 0.25): 1, (0.25, 0.75): 2}


def test_late_control_changes_less_than_full_control(tiny_pipeline, tiny_bundle):
    video, net = moving_square(8, 64), tiny_bundle["controlnet"]
    plain = render(tiny_pipeline)
    full = render(tiny_pipeline, make_control(tiny_pipeline, [net], [video]))
    late = render(tiny_pipeline, make_control(tiny_pipeline, [net], [video], starts=[0.75]))
    assert 0 < np.abs(late - plain).mean() < np.abs(full - plain).mean()


def test_control_frame_k_reaches_frame_k_through_context_windows(tiny_pipeline, tiny_bundle, clips):
    """Windows of 4 frames without overlap never mix: a control clip differing only in frame 3 changes frames 0-3
    (frame 3's window) and leaves frames 4-7 bit-identical; both ControlNets of a pair act, each at its scale."""
    net = tiny_bundle["controlnet"]
    square, changed = read_video(clips["square"]), read_video(clips["changed"])
    tiny_pipeline.context = ContextSettings(length=4, overlap=0)
    try:
        one = render(tiny_pipeline, make_control(tiny_pipeline, [net], [square]))
        other = render(tiny_pipeline, make_control(tiny_pipeline, [net], [changed]))
        pair = render(tiny_pipeline, make_control(tiny_pipeline, [net, net], [square, changed], [1.0, 0.5]))
        second_off = render(tiny_pipeline, make_control(tiny_pipeline, [net, net], [square, changed], [1.0, 0.0]))
    finally:
        tiny_pipeline.context = None
    differs = [not np.array_equal(one[f], other[f]) for f in range(8)]
    assert differs == [True] * 4 + [False] * 4
    assert not np.array_equal(pair[:4], one[:4]) and not np.array_equal(pair[4:], one[4:])
    assert np.array_equal(second_off, one)  # each net gets its own scale


# ------------------------------------------------------------------------------------------------ runs


def run(tmp_path, tiny_bundle, name, **changes):
    cfg = load(tmp_path / name, tiny_bundle, **changes)
    out = run_sampling(None, cfg=cfg, progress=False)
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    return out, {r["stage"]: read_video(out / r["files"]["frames"]) for r in records}


def test_controlled_t2v_then_face_and_tiled_vcd(tmp_path, tiny_bundle, clips):
    control = [{"model": str(tiny_bundle["controlnet"]), "video": str(clips["square"])}]
    _, plain = run(tmp_path, tiny_bundle, "plain")
    _, tiled = run(tmp_path, tiny_bundle, "tiled", control=control, stages=["t2v", "tiled"],
                   tiled={"scale": 2, "tile": 64, "padding": 8, "strength": 0.5, "steps": 2})
    _, face = run(tmp_path, tiny_bundle, "face", control=control, stages=["t2v", "face"],
                  face={"clipseg_model": str(tiny_bundle["clipseg"]), "threshold": 0.01, "size": 32, "steps": 2})
    assert not np.array_equal(tiled["t2v"], plain["t2v"])
    assert np.array_equal(face["t2v"], tiled["t2v"])
    assert tiled["tiled"].shape == (8, 128, 128, 3) and face["face"].shape == (8, 64, 64, 3)
    assert not np.array_equal(face["face"], face["t2v"])


def test_canny_controlled_edit_saves_its_control_video(tmp_path, tiny_bundle):
    edit = {"input_video": str(tiny_bundle["input_clip"]), "input_strength": 0.75, "formats": ["gif"]}
    canny_entry = {"model": str(tiny_bundle["controlnet"]), "type": "canny", "from": "input_video", "low": 50,
                   "high": 150}
    _, plain = run(tmp_path, tiny_bundle, "plain", **edit)
    out, controlled = run(tmp_path, tiny_bundle, "canny", control=[canny_entry], **edit)
    _, zero = run(tmp_path, tiny_bundle, "zero", control=[{**canny_entry, "scale": 0.0}], **edit)
    assert not np.array_equal(controlled["edit"], plain["edit"])
    assert np.array_equal(zero["edit"], plain["edit"])
    source = prepare_input_video(str(tiny_bundle["input_clip"]), 8, 64, 64)
    assert np.array_equal(read_video(out / "control-0-canny.gif"), canny_video(source, 50, 150))
