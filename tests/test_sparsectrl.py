"""SparseCtrl keyframe control (`sparse_control:`): the keyframe conditioning, the checks before any model loads, and
the net's effect through the pipeline and run_sampling on the tiny bundle (tiny rgb and scribble nets)."""

import json
import shutil

import numpy as np
import pytest
import torch
import yaml

from magicme.context import ContextSettings
from magicme.control.nets import Control
from magicme.control.nets import residual_unet
from magicme.control.sparse_net import SparseControl, keyframe_conditioning
from magicme.embeddings import find_embeddings
from magicme.errors import ConfigError
from magicme.families.sd15 import load as load_pipeline
from magicme.naming import file_fingerprints, name_samples
from magicme.sampling import run_sampling
from magicme.schema import check_sample_config, check_settings, load_sample_config, model_config
from magicme.tiny.controlnet import moving_square
from magicme.tiny.sparsectrl import save_png, save_tiny_sparsectrl
from magicme.video_io import read_video

PROMPT = "a photo of embedding:tinyperson man"


# ------------------------------------------------------------------------------------------------ conditioning


def test_keyframe_conditioning_puts_keyframe_k_at_frame_k_and_masks_exactly_those_frames():
    keyframes = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2) + 1
    cond, mask = keyframe_conditioning(keyframes, [5, 1], 6)
    assert cond.shape == (1, 3, 6, 2, 2) and mask.shape == (1, 1, 6, 2, 2)
    assert torch.equal(cond[0, :, 5], keyframes[0]) and torch.equal(cond[0, :, 1], keyframes[1])
    assert not cond[0, :, [0, 2, 3, 4]].any()
    assert mask[0, 0, :, 0, 0].tolist() == [0, 1, 0, 0, 0, 1] and torch.equal(mask, mask[..., :1, :1].expand_as(mask))
    with pytest.raises(ValueError, match="distinct"):
        keyframe_conditioning(keyframes, [1, 1], 6)


class EchoUNet(torch.nn.Module):
    """Returns the residuals it is given, to see what a wrapper passes."""

    def forward(self, sample, timestep, encoder_hidden_states, down_block_additional_residuals=None,
                mid_block_additional_residual=None):
        return down_block_additional_residuals, mid_block_additional_residual


class FixedSparse(SparseControl):
    """Residuals of ones × the step's scale, without a net."""

    def residuals(self, sample, timestep, encoder_hidden_states, scales):
        (scale,) = scales
        return (torch.full((2,), scale), torch.full((3,), scale)), torch.full((1,), scale)


def test_residual_unet_adds_sparse_residuals_to_given_ones_on_its_steps_only():
    unet, given = EchoUNet(), ((torch.tensor([1.0, 2.0]), torch.zeros(3)), torch.tensor([5.0]))
    sparse = FixedSparse(None, None, None, scale=0.5, start=0.25, end=1.0)
    x = torch.zeros(1)
    with residual_unet(unet, sparse, lambda: 4):
        down, mid = unet(x, 1, x, *given)  # step 0: before start, the call untouched
        assert down is given[0] and mid is given[1]
        down, mid = unet(x, 1, x, *given)  # step 1 (1/4 ≥ start): the caller's residuals plus 0.5
        assert torch.equal(down[0], torch.tensor([1.5, 2.5])) and torch.equal(down[1], torch.full((3,), 0.5))
        assert torch.equal(mid, torch.tensor([5.5]))
        down, mid = unet(x, 1, x)  # step 2, no residuals from the caller: its own
        assert torch.equal(down[0], torch.full((2,), 0.5)) and torch.equal(mid, torch.tensor([0.5]))
        unet(x, 1, x)  # step 3
        with pytest.raises(RuntimeError, match="UNet call 5 in a loop of 4 steps"):
            unet(x, 1, x)
    assert "forward" not in vars(unet)  # the class's forward again


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def nets(tiny_bundle, tmp_path_factory):
    """The tiny rgb and scribble nets with random zero convolutions, and an rgb net fresh from `from_unet`."""
    folder, unet = tmp_path_factory.mktemp("sparsectrl"), tiny_bundle["sd15"] / "unet"
    return {"rgb": save_tiny_sparsectrl(folder / "rgb", unet, "rgb", seed=4),
            "scribble": save_tiny_sparsectrl(folder / "scribble", unet, "scribble", seed=5),
            "fresh": save_tiny_sparsectrl(folder / "fresh", unet, "rgb", perturb=False)}


@pytest.fixture(scope="module")
def keyframes(tmp_path_factory):
    """PNG keyframes: the square's first and last frame, another image, a copy of the first, and a non-image."""
    folder, square = tmp_path_factory.mktemp("keyframes"), moving_square(8, 64)
    paths = {"first": save_png(folder / "first.png", square[0]), "last": save_png(folder / "last.png", square[7]),
             "other": save_png(folder / "other.png", moving_square(8, 64, seed=9)[3, ::-1]),
             "wide": save_png(folder / "wide.png", moving_square(8, 96)[2, 16:80])}
    paths["copy"] = folder / "copy" / "first.png"
    paths["copy"].parent.mkdir()
    shutil.copy(paths["first"], paths["copy"])
    paths["broken"] = folder / "broken.png"
    paths["broken"].write_text("not an image")
    return paths


@pytest.fixture(scope="module")
def v3_pipeline(tiny_bundle):
    """The tiny SD1.5 pipeline with the v3-shaped motion module SparseCtrl needs."""
    cfg = model_config({"base": str(tiny_bundle["sd15"]), "base_config": None, "motion_module":
                        str(tiny_bundle["motion_v3"]), "embeddings_dir": str(tiny_bundle["embedding"].parent),
                        "scheduler": "ddim"})
    return load_pipeline(cfg, find_embeddings(tiny_bundle["embedding"].parent), device="cpu")


def config(tmp_path, tiny_bundle, **changes) -> dict:
    cfg = {"model": {"base": str(tiny_bundle["sd15"]), "motion_module": str(tiny_bundle["motion_v3"]),
                     "embeddings_dir": str(tiny_bundle["embedding"].parent), "scheduler": "ddim"},
           "prompts": [PROMPT], "seeds": [3], "steps": 3, "frames": 8, "width": 64, "height": 64,
           "save_frames": True, "formats": ["gif"], "output_dir": str(tmp_path / "out")}
    return {**cfg, **changes}


def load(tmp_path, tiny_bundle, **changes):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config(tmp_path, tiny_bundle, **changes)))
    return load_sample_config(path)


def block(nets, keyframes, **changes) -> dict:
    return {"model": str(nets["rgb"]), "frames": {0: str(keyframes["first"]), 7: str(keyframes["last"])},
            "type": "rgb", **changes}


# ------------------------------------------------------------------------------------------------ checks


@pytest.mark.parametrize("changes, message", [
    ({"weight": 1}, r"^sparse_control: unknown key\(s\) \['weight'\]"),
    ({"model": None}, r"^sparse_control.model: must be the path of a diffusers SparseControlNetModel folder"),
    ({"model": "missing"}, r"^sparse_control.model: missing not found; .*download_checkpoint.sh --only control"),
    ({"model": "SD"}, r"^sparse_control.model: .* is not a diffusers SparseControlNetModel folder"),
    ({"model": "UNET"}, r"^sparse_control.model: .* holds a UNet2DConditionModel, not a SparseControlNetModel"),
    ({"model": "CONTROLNET"}, r"^sparse_control.model: .* holds a ControlNetModel, not a SparseControlNetModel"),
    ({"type": "scribble"}, r"^sparse_control.type: scribble does not fit .*: it takes 4 conditioning channels with "
                           r"use_simplified_condition_embedding true \(a net for type rgb\); set type: rgb"),
    ({"model": "SCRIBBLE"}, r"^sparse_control.type: rgb does not fit .*\(a net for type scribble\); set type: scribble"),
    ({"type": "depth"}, r"^sparse_control.type: 'depth' must be one of rgb, scribble"),
    ({"type": None}, r"^sparse_control.type: None must be one of rgb, scribble"),
    ({"type": ["rgb"]}, r"^sparse_control.type: \['rgb'\] must be one of rgb, scribble"),
    ({"frames": {8: "FIRST"}}, r"^sparse_control.frames: keyframe 8 is not an integer frame in \[0, 8\)"),
    ({"frames": {-1: "FIRST"}}, r"^sparse_control.frames: keyframe -1 is not an integer frame in \[0, 8\)"),
    ({"frames": {}}, r"^sparse_control.frames: must map frame numbers to keyframe images"),
    ({"frames": None}, r"^sparse_control.frames: must map frame numbers to keyframe images"),
    ({"frames": {3: "nowhere.png"}}, r"^sparse_control.frames\[3\]: nowhere.png not found"),
    ({"frames": {3: "BROKEN"}}, r"^sparse_control.frames\[3\]: cannot read .*broken.png as an image"),
    ({"scale": -1}, r"^sparse_control.scale: -1 must be >= 0"),
    ({"start": 0.5, "end": 0.5}, r"^sparse_control.start, sparse_control.end: 0.5, 0.5 must satisfy 0 <= start < end"),
    ({"end": "late"}, r"^sparse_control.end: 'late' is not a number"),
])
def test_bad_blocks_are_one_line_errors_before_loading(tmp_path, tiny_bundle, nets, keyframes, changes, message):
    paths = {"SD": str(tiny_bundle["sd15"]), "UNET": str(tiny_bundle["sd15"] / "unet"),
             "CONTROLNET": str(tiny_bundle["controlnet"]), "SCRIBBLE": str(nets["scribble"]),
             "FIRST": str(keyframes["first"]), "BROKEN": str(keyframes["broken"])}
    changes = {k: paths.get(v, v) if isinstance(v, str) else v for k, v in changes.items()}
    if isinstance(changes.get("frames"), dict):
        changes["frames"] = {k: paths.get(v, v) for k, v in changes["frames"].items()}
    cfg = load(tmp_path, tiny_bundle, sparse_control=block(nets, keyframes, **changes))
    with pytest.raises(ConfigError, match=message) as error:
        check_settings(cfg)
    assert "\n" not in str(error.value)


def test_more_frames_than_the_net_sees_is_an_error(tmp_path, tiny_bundle, nets, keyframes):
    cfg = load(tmp_path, tiny_bundle, frames=40, context={"length": 16, "overlap": 4},
               sparse_control=block(nets, keyframes))
    with pytest.raises(ConfigError, match=r"^sparse_control.model: the SparseCtrl net sees all 40 frames at once, "
                                          r"at most its motion_max_seq_length 32; lower frames$"):
        check_settings(cfg)


def test_the_motion_module_must_be_v3_before_any_model_loads(tmp_path, tiny_bundle, nets, keyframes):
    def no_load(*args):
        raise AssertionError("a model was loaded")

    for version in ("v1", "v2"):
        cfg = load(tmp_path / version, tiny_bundle, sparse_control=block(nets, keyframes))
        cfg.model.motion_module = str(tiny_bundle[f"motion_{version}"])
        with pytest.raises(ConfigError, match=rf"^sparse_control: SparseCtrl nets were trained with the AnimateDiff "
                                              rf"v3 motion module .* is {version}; use v3_sd15_mm.ckpt$"):
            run_sampling(None, cfg=cfg, progress=False, load=no_load)
        assert not (tmp_path / version / "out").exists()
    samples, _ = check_sample_config(load(tmp_path / "v3", tiny_bundle, sparse_control=block(nets, keyframes)))
    assert len(samples) == 1


def test_sdxl_has_no_sparsectrl(tmp_path, tiny_bundle, nets, keyframes):
    """The tiny SD-XL module is v3-shaped too (no mid block, 32 frames): the family, not the module, refuses."""
    cfg = load(tmp_path, tiny_bundle, sparse_control=block(nets, keyframes),
               model={"family": "sdxl", "base": str(tiny_bundle["sdxl"]), "motion_module":
                      str(tiny_bundle["motion_sdxl"]), "embeddings_dir": str(tiny_bundle["embedding_sdxl"].parent),
                      "scheduler": "ddim", "animatediff_numerics": "diffusers"})
    with pytest.raises(ConfigError, match=r"^sparse_control: SparseCtrl is not wired for model.family sdxl"):
        check_sample_config(cfg)


def test_an_unreadable_keyframe_fails_before_any_model_loads(tmp_path, tiny_bundle, nets, keyframes):
    """A PNG whose header opens but whose pixels do not decode is caught when the keyframes are read (`prepare`),
    still before any model loads, naming the keyframe."""
    truncated = tmp_path / "truncated.png"
    truncated.parent.mkdir(parents=True, exist_ok=True)
    truncated.write_bytes(keyframes["first"].read_bytes()[:80])
    cfg = load(tmp_path, tiny_bundle, sparse_control=block(nets, keyframes, frames={2: str(truncated)}))

    def no_load(*args):
        raise AssertionError("a model was loaded")

    with pytest.raises(ConfigError, match=r"^sparse_control.frames\[2\]: .*truncated.png: cannot read this keyframe"):
        run_sampling(None, cfg=cfg, progress=False, load=no_load)
    assert not (tmp_path / "out").exists()


def test_a_net_for_another_unet_is_an_error_naming_it(tmp_path, tiny_bundle, keyframes):
    """A SparseCtrl net made for a UNet with another text width loads, then fails the base model's shape check."""
    from diffusers import UNet2DConditionModel

    from magicme.tiny.sd import tiny_unet

    UNet2DConditionModel.from_config({**tiny_unet().config, "cross_attention_dim": 16}).save_pretrained(
        tmp_path / "unet16")
    net = save_tiny_sparsectrl(tmp_path / "net16", tmp_path / "unet16", "rgb")
    cfg = load(tmp_path, tiny_bundle, sparse_control={"model": str(net), "frames": {0: str(keyframes["first"])},
                                                      "type": "rgb"})
    with pytest.raises(ConfigError, match=r"^sparse_control.model: .*net16 is a SparseCtrl net for a UNet with "
                                          r"channels, text width \(\[32, 64\], 16\), the base model has "
                                          r"\(\[32, 64\], 32\); use a SparseCtrl net of the base's family$"):
        run_sampling(None, cfg=cfg, progress=False)


def test_the_keyframes_and_net_are_in_the_sample_name(tmp_path, tiny_bundle, nets, keyframes):
    embeddings = {"tinyperson": tiny_bundle["embedding"]}

    def name(**changes):
        cfg = load(tmp_path, tiny_bundle, sparse_control=block(nets, keyframes, **changes))
        return name_samples(cfg, check_settings(cfg), file_fingerprints(cfg, embeddings))[0].name

    first = name(frames={0: str(keyframes["first"])})
    assert name(frames={0: str(keyframes["copy"])}) == first  # the image's content, not its path
    assert len({first, name(frames={0: str(keyframes["other"])}), name(frames={3: str(keyframes["first"])}),
                name(frames={0: str(keyframes["first"])}, model=str(nets["fresh"])),
                name(frames={0: str(keyframes["first"])}, scale=0.5)}) == 5


# ------------------------------------------------------------------------------------------------ pipeline


def render(pipe, sparse=None, control=None, steps=4):
    return pipe.text_to_video(PROMPT, "", torch.Generator().manual_seed(0), gamma=0.1, frames=8, height=64, width=64,
                              steps=steps, guidance_scale=7.5, progress=False, control=control, sparse=sparse)


def make_sparse(pipe, net, images, indices, kind="rgb", scale=1.0, start=0.0, end=1.0) -> SparseControl:
    return SparseControl.load(str(net), kind, np.asarray(images), indices, 8, scale, start, end, pipe)


SQUARE = moving_square(8, 64)


def test_fresh_net_and_scale_zero_are_bit_identical_to_no_control(v3_pipeline, nets):
    plain = render(v3_pipeline)
    assert np.array_equal(render(v3_pipeline, make_sparse(v3_pipeline, nets["fresh"], SQUARE[[0, 7]], [0, 7])), plain)
    assert np.array_equal(render(v3_pipeline, make_sparse(v3_pipeline, nets["rgb"], SQUARE[[0]], [0], scale=0.0)),
                          plain)
    rgb = render(v3_pipeline, make_sparse(v3_pipeline, nets["rgb"], SQUARE[[0]], [0]))
    half = render(v3_pipeline, make_sparse(v3_pipeline, nets["rgb"], SQUARE[[0]], [0], scale=0.5))
    scribble = render(v3_pipeline, make_sparse(v3_pipeline, nets["scribble"], SQUARE[[0]], [0], kind="scribble"))
    for video in (rgb, scribble):
        assert not np.allclose(video, plain, atol=1e-3)
    assert 0 < np.abs(half - plain).mean() < np.abs(rgb - plain).mean()


def test_rgb_keyframes_are_vae_latents_and_scribble_keyframes_pixels(v3_pipeline, nets):
    images = SQUARE[[2, 5]]
    rgb = make_sparse(v3_pipeline, nets["rgb"], images, [6, 1])
    latents = v3_pipeline.encode_video(images)[0]  # (4, 2, 8, 8)
    assert rgb.cond.shape == (1, 4, 8, 8, 8) and rgb.mask.shape == (1, 1, 8, 8, 8)
    assert torch.equal(rgb.cond[0, :, 6], latents[:, 0]) and torch.equal(rgb.cond[0, :, 1], latents[:, 1])
    scribble = make_sparse(v3_pipeline, nets["scribble"], images, [6, 1], kind="scribble")
    assert scribble.cond.shape == (1, 3, 8, 64, 64)
    assert torch.equal(scribble.cond[0, :, 6], torch.from_numpy(images[0]).permute(2, 0, 1))
    assert scribble.mask[0, 0, :, 0, 0].tolist() == [0, 1, 0, 0, 0, 0, 1, 0]


def test_the_mask_tells_the_net_where_the_keyframes_are(v3_pipeline, nets):
    """A black scribble keyframe is all zeros, the same conditioning at any frame: only the mask differs between
    one at frame 2 and one at frame 5, and the videos differ."""
    black = np.zeros((1, 64, 64, 3), dtype=np.float32)
    at_2 = render(v3_pipeline, make_sparse(v3_pipeline, nets["scribble"], black, [2], kind="scribble"), steps=2)
    at_5 = render(v3_pipeline, make_sparse(v3_pipeline, nets["scribble"], black, [5], kind="scribble"), steps=2)
    assert not np.array_equal(at_2, at_5)


def test_the_net_reads_a_travelling_prompts_per_frame_rows(v3_pipeline, nets):
    sparse, seen = make_sparse(v3_pipeline, nets["rgb"], SQUARE[[0]], [0]), []
    sparse.net.register_forward_pre_hook(lambda _, args, kwargs: seen.append(kwargs["encoder_hidden_states"]),
                                         with_kwargs=True)
    v3_pipeline.text_to_video({0: PROMPT, 7: PROMPT + " smiling"}, "", torch.Generator().manual_seed(0), gamma=0.1,
                              frames=8, height=64, width=64, steps=1, guidance_scale=7.5, progress=False,
                              sparse=sparse)
    rows = seen[0].unflatten(0, (2, 8))  # (negative, positive) × frames
    assert not torch.equal(rows[1, 0], rows[1, 7]) and torch.equal(rows[0, 0], rows[0, 7])


def test_start_and_end_limit_the_steps_the_net_runs(v3_pipeline, nets):
    counts = {}
    for start, end in [(0.0, 1.0), (0.5, 1.0), (0.0, 0.25), (0.25, 0.75)]:
        sparse = make_sparse(v3_pipeline, nets["rgb"], SQUARE[[0]], [0], start=start, end=end)
        calls = []
        sparse.net.register_forward_hook(lambda *_: calls.append(1))
        render(v3_pipeline, sparse)
        counts[(start, end)] = len(calls)
    assert counts == {(0.0, 1.0): 4, (0.5, 1.0): 2, (0.0, 0.25): 1, (0.25, 0.75): 2}


def test_a_keyframe_reaches_every_frame_through_the_nets_temporal_layers(v3_pipeline, nets):
    """What a keyframe changes is not local: SparseCtrl's net has temporal attention over all frames (that is how a
    sparse keyframe guides the frames between), and it runs outside the context windows. With windows of 4 frames
    that never mix, another image at frame 1 — or the same image at frame 5 — still changes frames in both windows."""
    v3_pipeline.context = ContextSettings(length=4, overlap=0)
    try:
        one = render(v3_pipeline, make_sparse(v3_pipeline, nets["rgb"], SQUARE[[1]], [1]))
        other = render(v3_pipeline, make_sparse(v3_pipeline, nets["rgb"], SQUARE[[6]], [1]))
        moved = render(v3_pipeline, make_sparse(v3_pipeline, nets["rgb"], SQUARE[[1]], [5]))
    finally:
        v3_pipeline.context = None
    for video in (other, moved):
        assert [not np.array_equal(one[f], video[f]) for f in range(8)] == [True] * 8


def test_controlnets_and_sparsectrl_act_together(v3_pipeline, nets, tiny_bundle):
    """Their residuals add up: each alone differs from both; either at scale 0 leaves the other's video bit for
    bit."""
    def control(scale):
        return Control.load([str(tiny_bundle["controlnet"])], [SQUARE], [scale], [0.0], [1.0], v3_pipeline.device,
                            v3_pipeline.dtype)

    def sparse(scale):
        return make_sparse(v3_pipeline, nets["rgb"], SQUARE[[0]], [0], scale=scale)

    controlnet_only, sparse_only = render(v3_pipeline, control=control(1.0)), render(v3_pipeline, sparse(1.0))
    both = render(v3_pipeline, sparse(1.0), control(1.0))
    assert not np.array_equal(both, controlnet_only) and not np.array_equal(both, sparse_only)
    assert np.array_equal(render(v3_pipeline, sparse(0.0), control(1.0)), controlnet_only)
    assert np.array_equal(render(v3_pipeline, sparse(1.0), control(0.0)), sparse_only)


# ------------------------------------------------------------------------------------------------ runs


def run(tmp_path, tiny_bundle, name, **changes):
    cfg = load(tmp_path / name, tiny_bundle, **changes)
    out = run_sampling(None, cfg=cfg, progress=False)
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    return out, {r["stage"]: read_video(out / r["files"]["frames"]) for r in records}


def test_sparse_controlled_t2v_then_face_and_tiled_vcd(tmp_path, tiny_bundle, nets, keyframes):
    """With a travelling prompt and FreeU on; a wider keyframe is fitted to the run's 64² like a control clip."""
    sparse = block(nets, keyframes, frames={0: str(keyframes["wide"]), 7: str(keyframes["last"])})
    both = {"prompts": [{"prompt": {0: PROMPT, 7: PROMPT + " smiling"}}], "freeu": {}}
    _, plain = run(tmp_path, tiny_bundle, "plain", **both)
    out, tiled = run(tmp_path, tiny_bundle, "tiled", sparse_control=sparse, stages=["t2v", "tiled"], **both,
                     tiled={"scale": 2, "tile": 64, "padding": 8, "strength": 0.5, "steps": 2})
    _, face = run(tmp_path, tiny_bundle, "face", sparse_control=sparse, stages=["t2v", "face"], **both,
                  face={"clipseg_model": str(tiny_bundle["clipseg"]), "threshold": 0.01, "size": 32, "steps": 2})
    assert not np.array_equal(tiled["t2v"], plain["t2v"])
    assert np.array_equal(face["t2v"], tiled["t2v"])
    assert tiled["tiled"].shape == (8, 128, 128, 3) and face["face"].shape == (8, 64, 64, 3)
    assert not np.array_equal(face["face"], face["t2v"])
    saved = yaml.safe_load((out / "config.yaml").read_text())["sparse_control"]
    assert saved == sparse


def test_sparse_controlled_edit(tmp_path, tiny_bundle, nets, keyframes):
    edit = {"input_video": str(tiny_bundle["input_clip"]), "input_strength": 0.75}
    _, plain = run(tmp_path, tiny_bundle, "plain", **edit)
    _, controlled = run(tmp_path, tiny_bundle, "sparse", sparse_control=block(nets, keyframes), **edit)
    assert not np.array_equal(controlled["edit"], plain["edit"])
