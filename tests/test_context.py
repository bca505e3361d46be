"""Context windows (magicme/context.py): exact window layouts, the blending weights, the fusion of window
predictions, and the UNet wrapper on the tiny bundle's real UNetMotionModel."""

import numpy as np
import pytest
import torch

from magicme.context import ContextSettings, context_windows, fuse_windows, window_weights, windowed_unet


def span(start: int, stop: int) -> list[int]:
    return list(range(start, stop))


# --- context_windows -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("closed_loop", [False, True])
@pytest.mark.parametrize("frames", [1, 5, 16])
def test_short_video_is_one_window(frames, closed_loop):
    assert context_windows(frames, 16, 4, closed_loop) == [span(0, frames)]


def test_64_frames_stride_12():
    assert context_windows(64, 16, 4) == [span(0, 16), span(12, 28), span(24, 40), span(36, 52), span(48, 64)]


def test_last_window_is_shifted_back_to_the_last_frame():
    assert context_windows(20, 16, 4) == [span(0, 16), span(4, 20)]
    # 30 frames: 0, 12, then 24 would run past the end → 14 (consecutive windows still share ≥ 4 frames)
    assert context_windows(30, 16, 4) == [span(0, 16), span(12, 28), span(14, 30)]


def test_closed_loop_wraps_around():
    assert context_windows(24, 16, 4, closed_loop=True) == [span(0, 16), span(12, 24) + span(0, 4)]
    # 30 frames: starts 0, 12, 24 keep the stride; the last one wraps by 10 frames
    windows = context_windows(30, 16, 4, closed_loop=True)
    assert windows == [span(0, 16), span(12, 28), span(24, 30) + span(0, 10)]
    assert any(w.index(29) + 1 == w.index(0) for w in windows if 29 in w and 0 in w)  # the seam: 29 then 0


@pytest.mark.parametrize("closed_loop", [False, True])
@pytest.mark.parametrize("frames,length,overlap", [
    (17, 16, 4), (20, 16, 4), (64, 16, 4), (100, 24, 8), (33, 32, 0), (7, 4, 3), (50, 16, 15), (9, 1, 0)])
def test_every_frame_covered_by_full_windows(frames, length, overlap, closed_loop):
    windows = context_windows(frames, length, overlap, closed_loop)
    assert set().union(*windows) == set(range(frames))
    for window in windows:
        assert len(window) == length and len(set(window)) == length
        assert all(0 <= i < frames for i in window)
    assert windows[0] == span(0, length)
    for a, b in zip(windows, windows[1:] + (windows[:1] if closed_loop else [])):
        assert len(set(a) & set(b)) >= overlap  # neighbours (and the loop's seam) share ≥ overlap frames
    if not closed_loop:
        assert windows[-1][-1] == frames - 1


@pytest.mark.parametrize("length,overlap", [(16, 16), (16, 20), (0, 0), (-1, 0), (4, -1)])
def test_invalid_windows_raise(length, overlap):
    with pytest.raises(ValueError):
        context_windows(64, length, overlap)
    with pytest.raises(ValueError):
        window_weights(length, overlap)
    with pytest.raises(ValueError):
        ContextSettings(length, overlap)


def test_no_frames_raises():
    with pytest.raises(ValueError):
        context_windows(0, 16, 4)


# --- window_weights --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("length,overlap", [(16, 4), (16, 8), (15, 4), (16, 12), (5, 4), (3, 1)])
def test_weights_symmetric_positive_peak_in_middle(length, overlap):
    w = window_weights(length, overlap)
    assert w.dtype == torch.float64 and w.shape == (length,)
    assert torch.equal(w, w.flip(0))
    assert bool((w > 0).all())
    assert w[(length - 1) // 2] == w.max() and w[0] < w.max()
    half = w[: (length + 1) // 2]
    assert bool((half[1:] >= half[:-1]).all())  # rises towards the middle


def test_weights_shape_of_the_ramp():
    w = window_weights(16, 4)
    assert torch.equal(w[4:12], torch.ones(8, dtype=torch.float64))  # untouched middle
    assert bool((w[:4] < 1).all())  # the ramp covers exactly the overlap
    # the falling ramp of a window and the rising ramp of the next sum to 1 over their overlap (crossfade)
    torch.testing.assert_close(w[-4:] + w[:4], torch.ones(4, dtype=torch.float64), rtol=0, atol=1e-15)
    assert torch.equal(window_weights(8, 0), torch.ones(8, dtype=torch.float64))


# --- fuse_windows ----------------------------------------------------------------------------------------------

def fake_forward(calls: list | None = None):
    """A frame-local 'UNet': 2·sample plus the mean of each (batch, frame) conditioning row, and the timestep."""
    def forward(sample, encoder_hidden_states, timestep=0.0):
        if calls is not None:
            calls.append((sample, encoder_hidden_states))
        b, _, f = sample.shape[:3]
        cond = encoder_hidden_states.mean(dim=(1, 2)).view(b, f)[:, None, :, None, None]
        return sample * 2 + cond + timestep
    return forward


def video_inputs(batch=2, frames=20, generator_seed=0):
    g = torch.Generator().manual_seed(generator_seed)
    sample = torch.randn(batch, 4, frames, 3, 5, generator=g, dtype=torch.float64)
    # distinct rows per (batch, frame), batch-major: row b·F + f
    rows = torch.randn(batch * frames, 7, 6, generator=g, dtype=torch.float64)
    return sample, rows


@pytest.mark.parametrize("closed_loop", [False, True])
@pytest.mark.parametrize("frames,length,overlap", [(20, 16, 4), (30, 16, 4), (9, 4, 2), (11, 4, 3), (12, 5, 0)])
def test_frame_local_forward_is_reproduced_by_any_windowing(frames, length, overlap, closed_loop):
    sample, rows = video_inputs(frames=frames)
    whole = fake_forward()(sample, rows, timestep=0.5)
    windows = context_windows(frames, length, overlap, closed_loop)
    fused = fuse_windows(fake_forward(), sample, rows, windows, window_weights(length, overlap), timestep=0.5)
    assert fused.shape == whole.shape and fused.dtype == torch.float64
    torch.testing.assert_close(fused, whole, rtol=0, atol=1e-12)


def test_each_window_gets_its_frames_rows():
    sample, rows = video_inputs(batch=2, frames=6)
    calls = []
    fuse_windows(fake_forward(calls), sample, rows, [[4, 5, 0, 1], [1, 2, 3, 4]], window_weights(4, 2))
    by_frame = rows.view(2, 6, 7, 6)
    for (window_sample, window_rows), window in zip(calls, [[4, 5, 0, 1], [1, 2, 3, 4]]):
        assert torch.equal(window_sample, sample[:, :, window])
        assert torch.equal(window_rows, torch.cat([by_frame[0, window], by_frame[1, window]]))


def test_overlapping_predictions_are_weighted_means():
    """Two constant 'predictions' per window: every frame gets Σ w·pred / Σ w of the windows covering it."""
    sample = torch.zeros(1, 1, 6, 1, 1, dtype=torch.float64)
    rows = torch.zeros(6, 1, 1, dtype=torch.float64)
    values = iter([1.0, 3.0])
    weights = torch.tensor([1.0, 2.0, 2.0, 1.0], dtype=torch.float64)

    def forward(sample, encoder_hidden_states):
        return torch.full_like(sample, next(values))

    fused = fuse_windows(forward, sample, rows, [[0, 1, 2, 3], [2, 3, 4, 5]], weights).flatten().tolist()
    assert fused == pytest.approx([1.0, 1.0, (2 * 1 + 1 * 3) / 3, (1 * 1 + 2 * 3) / 3, 3.0, 3.0], abs=1e-15)


def test_one_window_calls_forward_once_on_the_unsliced_inputs():
    sample, rows = video_inputs(frames=8)
    calls = []
    result = fuse_windows(fake_forward(calls), sample, rows, [span(0, 8)], window_weights(16, 4), timestep=1.0)
    assert len(calls) == 1 and calls[0][0] is sample and calls[0][1] is rows
    assert torch.equal(result, fake_forward()(sample, rows, timestep=1.0))


def test_fuse_rejects_bad_inputs():
    sample, rows = video_inputs(frames=8)
    w = window_weights(4, 2)
    with pytest.raises(ValueError, match="no window"):
        fuse_windows(fake_forward(), sample, rows, [span(0, 4)], w)
    with pytest.raises(ValueError, match="rows"):
        fuse_windows(fake_forward(), sample, rows[:8], context_windows(8, 4, 2), w)
    with pytest.raises(ValueError, match="weights"):
        fuse_windows(fake_forward(), sample, rows, context_windows(8, 4, 2), window_weights(5, 2))


def test_half_precision_predictions_are_summed_in_float32():
    sample, rows = video_inputs(frames=9)
    fused = fuse_windows(fake_forward(), sample.half(), rows.half(), context_windows(9, 4, 2), window_weights(4, 2))
    assert fused.dtype == torch.float16
    torch.testing.assert_close(fused, fake_forward()(sample.half(), rows.half()), rtol=0, atol=2e-3)


# --- windowed_unet on the real UNetMotionModel --------------------------------------------------------------------

SETTINGS = ContextSettings(length=4, overlap=2)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine, two OpenMP threads contending with other processes made each
    tiny UNet forward take ~5 s instead of ~0.07 s. Results are compared within the same setting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def unet_inputs(unet, frames: int, batch: int = 2):
    g = torch.Generator().manual_seed(frames)
    latents = torch.randn(batch, unet.config.in_channels, frames, 8, 8, generator=g)
    width = unet.config.cross_attention_dim
    rows = torch.randn(batch * frames, 5, width, generator=g)
    return latents, torch.tensor(901), rows


@pytest.fixture(scope="module")
def unet(tiny_pipeline):
    return tiny_pipeline.t2v.unet


@pytest.mark.parametrize("frames", [3, 4])
def test_short_calls_are_untouched(unet, frames):
    latents, t, rows = unet_inputs(unet, frames)
    with torch.no_grad():
        plain = unet(latents, t, encoder_hidden_states=rows).sample
        with windowed_unet(unet, SETTINGS):
            inside = unet(latents, t, encoder_hidden_states=rows).sample
            inside_tuple = unet(latents, t, rows, return_dict=False)
    assert torch.equal(inside, plain)
    assert isinstance(inside_tuple, tuple) and torch.equal(inside_tuple[0], plain)


def test_short_calls_reach_the_forward_as_given(unet):
    """≤ length frames: the very call (positional arguments, keywords, return value) passes through."""
    seen = []
    class_forward = unet.forward

    def spy(*args, **kwargs):
        seen.append((args, kwargs, class_forward(*args, **kwargs)))
        return seen[-1][2]

    unet.forward = spy
    try:
        latents, t, rows = unet_inputs(unet, 4)
        with torch.no_grad(), windowed_unet(unet, SETTINGS):
            result = unet(latents, t, encoder_hidden_states=rows)
    finally:
        del unet.forward
    (args, kwargs, returned), = seen
    assert args == (latents, t) and kwargs == {"encoder_hidden_states": rows} and result is returned


def test_no_settings_is_untouched(unet):
    latents, t, rows = unet_inputs(unet, 6)
    with torch.no_grad():
        plain = unet(latents, t, encoder_hidden_states=rows).sample
        with windowed_unet(unet, None):
            assert "forward" not in vars(unet)
            inside = unet(latents, t, encoder_hidden_states=rows).sample
    assert torch.equal(inside, plain)


@pytest.mark.parametrize("closed_loop", [False, True])
def test_long_calls_are_fused_windows(unet, closed_loop):
    settings = ContextSettings(length=4, overlap=2, closed_loop=closed_loop)
    latents, t, rows = unet_inputs(unet, 6)
    with torch.no_grad():
        windows = context_windows(6, 4, 2, closed_loop)
        manual = fuse_windows(lambda **kw: unet(**kw, return_dict=False)[0], latents, rows, windows,
                              window_weights(4, 2), timestep=t)
        plain = unet(latents, t, encoder_hidden_states=rows).sample
        with windowed_unet(unet, settings):
            # as the AnimateDiff pipelines call it (diffusers 0.3x: `.sample`; return_dict=False: `[0]`)
            out = unet(latents, t, encoder_hidden_states=rows, cross_attention_kwargs=None,
                       added_cond_kwargs=None).sample
            out_tuple = unet(latents, t, rows, return_dict=False)
            out_named = unet(sample=latents, timestep=t, encoder_hidden_states=rows, return_dict=True).sample
    assert out.shape == latents.shape
    assert torch.equal(out, manual) and torch.equal(out_tuple[0], manual) and torch.equal(out_named, manual)
    assert not torch.equal(out, plain)  # the motion module really saw windows, not the whole video


def test_forward_is_restored_also_after_an_error(unet):
    original = unet.forward
    with windowed_unet(unet, SETTINGS):
        assert unet.forward != original
    assert "forward" not in vars(unet) and unet.forward == original
    with pytest.raises(RuntimeError, match="boom"):
        with windowed_unet(unet, SETTINGS):
            raise RuntimeError("boom")
    assert "forward" not in vars(unet) and unet.forward == original


def test_an_existing_instance_forward_is_restored(unet):
    """Offload hooks (accelerate) put their own `forward` on the instance: it must come back, and be called."""
    calls = []
    class_forward = unet.forward

    def hooked(*args, **kwargs):
        calls.append(1)
        return class_forward(*args, **kwargs)

    unet.forward = hooked
    try:
        latents, t, rows = unet_inputs(unet, 6)
        with torch.no_grad(), windowed_unet(unet, SETTINGS):
            unet(latents, t, encoder_hidden_states=rows)
        assert len(calls) == len(context_windows(6, 4, 2))
        assert vars(unet)["forward"] is hooked
    finally:
        del unet.forward


def test_pipelines_denoise_through_the_windows(tiny_pipeline):
    """The unchanged diffusers loops (T2V with classifier-free guidance, V2V) run inside the block."""
    kwargs = dict(gamma=0.1, frames=7, height=32, width=32, steps=2, guidance_scale=7.5, progress=False)

    def t2v(settings):
        with windowed_unet(tiny_pipeline.t2v.unet, settings):
            return tiny_pipeline.text_to_video("a photo", "", torch.Generator().manual_seed(0), **kwargs)

    plain = t2v(None)
    assert (t2v(ContextSettings(8, 2)) == plain).all()  # 7 frames fit one window: untouched
    windowed = t2v(ContextSettings(4, 2))
    assert windowed.shape == plain.shape and (windowed != plain).any()
    with windowed_unet(tiny_pipeline.t2v.unet, ContextSettings(4, 2, closed_loop=True)):
        edited = tiny_pipeline.video_to_video(plain, "a photo", "", torch.Generator().manual_seed(0), gamma=0.1,
                                              strength=0.6, steps=2, guidance_scale=7.5, progress=False)
    assert edited.shape == plain.shape and bool(torch.isfinite(torch.from_numpy(edited)).all())
    assert "forward" not in vars(tiny_pipeline.t2v.unet)


# --- through sample.py ------------------------------------------------------------------------------------------

def sampled_frames(tmp_path, tiny_bundle, name: str, *overrides: str) -> np.ndarray:
    from PIL import Image

    import sample
    from tests.test_sampling import write_config

    config = write_config(tmp_path, tiny_bundle, prompts=["<tinyperson> man"], output_dir=str(tmp_path / name))
    assert sample.main(["--config", str(config), "--quiet", "save_frames=true", "steps=1", *overrides]) == 0
    (run_dir,) = (tmp_path / name).iterdir()
    (frames,) = [d for d in run_dir.iterdir() if d.is_dir() and any(d.glob("*.png"))]  # the sample's PNG folder
    return np.stack([np.asarray(Image.open(p)) for p in sorted(frames.glob("*.png"))])


def test_long_videos_through_sample_py(tmp_path, tiny_bundle, capsys):
    """v1 module (24 frames): 26 frames need context windows; with frames ≤ length the context changes nothing."""
    v1 = [f"model.motion_module={tiny_bundle['motion_v1']}", "model.motion_loras=[]"]
    long = sampled_frames(tmp_path, tiny_bundle, "long", *v1, "frames=26", "context={length: 8, overlap: 2}")
    looped = sampled_frames(tmp_path, tiny_bundle, "loop", *v1, "frames=26",
                            "context={length: 8, overlap: 2, closed_loop: true}")
    assert long.shape == looped.shape == (26, 48, 64, 3) and not np.array_equal(long, looped)
    short = sampled_frames(tmp_path, tiny_bundle, "short", *v1, "frames=4")
    short_context = sampled_frames(tmp_path, tiny_bundle, "short-context", *v1, "frames=4",
                                   "context={length: 8, overlap: 2}")
    assert np.array_equal(short, short_context)

    import sample
    from tests.test_sampling import write_config

    config = write_config(tmp_path, tiny_bundle, prompts=["man"])
    for overrides, message in (([*v1, "frames=26"], "frames: 26 is more than the motion module's 24 frames"),
                               ([*v1, "frames=30", "context={length: 25, overlap: 4}"],
                                "context.length: windows of 25 frames are more than the motion module's 24"),
                               (["context={length: 8, overlap: 8}"], "context.overlap: 8 must be in [0, context")):
        assert sample.main(["--config", str(config), "--quiet", *overrides]) == 2
        assert message in capsys.readouterr().err
