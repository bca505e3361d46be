"""Prompt travel: keyframe interpolation (exact), per-frame conditioning reaching the UNet in T2V and V2V, the
one-keyframe bit-identity, and bad keyframes reported before loading."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import sample
from magicme.prompts import frame_mix
from magicme.travel import interpolate, per_frame_conditioning
from tests.test_sampling import write_config


def test_frames_mix_the_keyframes_around_them():
    assert frame_mix([0, 4], 6) == [(0, 0, 0.0), (0, 1, 0.25), (0, 1, 0.5), (0, 1, 0.75), (1, 1, 0.0), (1, 1, 0.0)]
    assert frame_mix([2, 3], 5) == [(0, 0, 0.0), (0, 0, 0.0), (0, 0, 0.0), (1, 1, 0.0), (1, 1, 0.0)]  # nearest outside
    assert frame_mix([0], 3) == [(0, 0, 0.0)] * 3


def test_interpolation_is_linear_between_keyframes():
    a, b = torch.zeros(1, 2, 3), torch.ones(1, 2, 3) * 4
    rows = interpolate([a, b], [0, 4], 5)
    assert rows.shape == (5, 2, 3) and torch.equal(rows[0], a[0]) and torch.equal(rows[4], b[0])
    assert torch.allclose(rows[1], torch.ones(2, 3)) and torch.allclose(rows[2], torch.full((2, 3), 2.0))


COMMON = dict(gamma=0.1, frames=4, height=64, width=64, steps=2, guidance_scale=7.5, progress=False)


def captured_rows(pipe, call):
    """The text conditioning the UNet's first cross-attention reads, at every step of `call`."""
    seen = []
    cross_attention = next(m for name, m in pipe.t2v.unet.named_modules() if name.endswith("attn2"))
    handle = cross_attention.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["encoder_hidden_states"].clone()), with_kwargs=True)
    try:
        call()
    finally:
        handle.remove()
    return seen


def test_each_frame_gets_its_keyframes_conditioning_in_t2v_and_v2v(tiny_pipeline):
    encode = tiny_pipeline.prompts.encode
    a, b, negative = encode("ab"), encode("cd"), encode("ef")
    travel = {0: "ab", 3: "cd"}
    for run in (lambda: tiny_pipeline.text_to_video(travel, "ef", torch.Generator().manual_seed(0), **COMMON),
                lambda: tiny_pipeline.video_to_video(np.full((4, 64, 64, 3), 0.5, np.float32), travel, "ef",
                                                     torch.Generator().manual_seed(0), gamma=0.1, strength=1.0,
                                                     steps=2, guidance_scale=7.5, progress=False)):
        rows = captured_rows(tiny_pipeline, run)[0]  # (2 · 4 frames, T, D): negative frames, then positive ones
        assert rows.shape[0] == 8 and all(torch.equal(rows[f], negative[0]) for f in range(4))
        assert torch.equal(rows[4], a[0]) and torch.equal(rows[7], b[0])
        assert torch.allclose(rows[5], a[0] + (b[0] - a[0]) / 3, atol=1e-6)
    assert "forward" not in tiny_pipeline.t2v.unet.__dict__  # the swap ends with the call


def test_per_frame_conditioning_is_undone_on_error(tiny_pipeline):
    unet = tiny_pipeline.t2v.unet
    with pytest.raises(RuntimeError):
        with per_frame_conditioning(unet, torch.zeros(2, 77, 32), torch.zeros(2, 77, 32)):
            raise RuntimeError
    assert "forward" not in unet.__dict__


def frames_of(run_dir, record) -> np.ndarray:
    folder = run_dir / record["files"]["frames"]
    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))])


def test_travel_through_sample_py(tmp_path, tiny_bundle):
    prompts = [{"prompt": "<tinyperson> man smiling"}, {"prompt": {0: "<tinyperson> man smiling"}},
               {"prompt": {0: "<tinyperson> man smiling", 3: "<tinyperson> man crying"}},
               {"prompt": "<tinyperson> man crying"},
               {"prompt": "<tinyperson> man smiling", "negative_prompt": {0: "blurry", 2: "dark"}},
               {"prompt": "<tinyperson> man smiling", "negative_prompt": "blurry"}]
    config = write_config(tmp_path, tiny_bundle, prompts=prompts, seeds=[1])
    assert sample.main(["--config", str(config), "--quiet", "save_frames=true"]) == 0
    (run_dir,) = (tmp_path / "out").iterdir()
    records = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    plain, one_key, travel, last, negative_travel, negative_first_keyframe = [frames_of(run_dir, r) for r in records]
    assert np.array_equal(plain, one_key)  # {0: X} is X, bit for bit
    assert not np.array_equal(travel, plain) and not np.array_equal(travel, last)
    assert not np.array_equal(negative_travel, negative_first_keyframe)  # the negative prompt travels too
    assert records[2]["prompt"] == {"0": "<tinyperson> man smiling", "3": "<tinyperson> man crying"}
    assert records[2]["files"]["mp4"].startswith("tinyperson-man-smiling-1-")  # named after the first keyframe


@pytest.mark.parametrize("prompt, message", [
    ({0: "a", 9: "b"}, "prompts[0].prompt: keyframe 9 is not an integer frame in [0, 4)"),
    ({0: "a", 2: "(b"}, "prompts[0].prompt[2]: unbalanced parentheses"),
    ({0: "a", 2: ""}, "prompts[0].prompt[2]: must be a non-empty string"),
])
def test_bad_keyframes_are_one_line_errors_before_loading(tmp_path, tiny_bundle, capsys, prompt, message):
    config = write_config(tmp_path, tiny_bundle, prompts=[{"prompt": prompt}])
    assert sample.main(["--config", str(config), "--quiet"]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_text_in_force_at_a_frame():
    from magicme.prompts import text_at

    travel = {2: "b", 5: "c"}
    assert [text_at(travel, f) for f in range(7)] == ["b", "b", "b", "b", "b", "c", "c"]
    assert text_at("plain", 3) == "plain"


def test_evaluation_reads_a_travelling_prompt(tmp_path, tiny_bundle):
    """samples.jsonl stores {frame: text} with string keys; evaluation gets it back with frame numbers."""
    from magicme.evaluation.runs import load_run

    config = write_config(tmp_path, tiny_bundle, prompts=[{"prompt": {0: "<tinyperson> man a", 2: "man b"}}],
                          frames=3)
    assert sample.main(["--config", str(config), "--quiet"]) == 0
    (run_dir,) = (tmp_path / "out").iterdir()
    (video,) = load_run(run_dir, "run")
    assert video.prompt == {0: "<tinyperson> man a", 2: "man b"}


def test_clip_t_scores_each_frame_against_its_own_text():
    from magicme.evaluation.evaluate import text_alignment

    class FakeClip:
        def texts(self, texts):
            return torch.tensor([[1.0, 0.0] if t == "a" else [0.0, 1.0] for t in texts])

    frames = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert text_alignment(frames, FakeClip(), ["a", "b"]) == pytest.approx(1.0)
    assert text_alignment(frames, FakeClip(), ["a", "a"]) == pytest.approx(0.5)
