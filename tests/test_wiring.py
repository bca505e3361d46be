"""Knob wiring, end to end through `run_sampling`: a knob is wired when changing it (and only it) changes the
rendered frames, and the same setting renders bit-identical frames.

Only the public entry point (`magicme.sampling.run_sampling(config, overrides, progress=False)`) and the run
folder (`samples.jsonl`, lossless PNG frames from `save_frames: true`) are used, so these tests survive a rewrite
of the internals. Each run renders several prompts × seeds: samples of one run share the loaded models, and two
samples that differ in one per-prompt setting isolate that setting. Run-level knobs (MotionLoRA strength, stage
overrides) need a second run with one change.

Stage isolation: the stages after T2V work on its output, so a different T2V video would explain any difference
in a later stage. The stage runs therefore start from an `input_video` re-rendered at `input_strength: 0`, which
returns the input unchanged: every sample then hands the *same* video to the face/tiled stage, and a difference
in that stage's output can only come from what the stage itself was given (prompt, γ, strength, steps, …).
Face VCD finds a real face with dlib in a crop of skimage's astronaut photo (random weights would give no face).
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from skimage import data as skdata

from magicme.sampling import run_sampling

TEXT_WIDTH = 32  # the tiny text encoder's width (magicme/tiny/sd.py)
PROMPT = "a photo of <Ann> man"  # mixed case on purpose: identity tokens are registered lower-cased
EDIT = "edit"  # the first stage's name in samples.jsonl when it re-renders `input_video`
BASE = {"steps": 2, "guidance_scale": 7.5, "frames": 3, "width": 32, "height": 32, "fps": 4, "gamma": 0.1,
        "seeds": [1], "negative_prompt": "lowres", "formats": ["gif"], "save_frames": True, "device": "cpu",
        "precision": "fp32"}


# --------------------------------------------------------------------------------------------------- helpers


class Run:
    """A finished run folder: its records and the exact (uint8) PNG frames of every sample × stage."""

    def __init__(self, run_dir: Path):
        self.dir = run_dir
        self.records = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]

    def record(self, index: int, stage: str) -> dict:
        (found,) = [r for r in self.records if r["index"] == index and r["stage"] == stage]
        return found

    def video(self, index: int, stage: str = "t2v") -> np.ndarray:
        return read_pngs(self.dir / self.record(index, stage)["files"]["frames"])


def read_pngs(folder: Path) -> np.ndarray:
    """(frames, h, w, 3) uint8, exactly as written (PNG is lossless; MP4/GIF are not compared)."""
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("*.png"))])


def same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(a, b)


def write_embedding(path: Path, vectors: torch.Tensor) -> None:
    """The A1111/ComfyUI textual-inversion layout Magic-Me publishes, written without magicme's own writer."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"string_to_param": {"*": vectors.clone()}, "name": path.stem}, path)


def write_frames(folder: Path, video: np.ndarray) -> Path:
    """An input video as a folder of PNG frames (lossless, so the stage input is known exactly)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(video):
        Image.fromarray(frame).save(folder / f"frame-{i:04d}.png")
    return folder


@pytest.fixture(scope="module")
def one_thread():
    """Render on one CPU thread: on a shared, loaded 2-core box two OpenMP threads spin against other processes
    (this module then took 160 s instead of 20 s). Restored afterwards; every comparison here is within it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tiny_bundle, one_thread) -> dict:
    """Identity files and input videos shared by every run of this module.

    ids/: Ann (vectors A), Ann_twin (the same vectors A), bob (vectors B); ids_swapped/: Ann with vectors B.
    """
    root = tmp_path_factory.mktemp("wiring")
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(4, TEXT_WIDTH, generator=gen) * 0.5 for _ in range(2))
    write_embedding(root / "ids" / "Ann.pt", a)
    write_embedding(root / "ids" / "Ann_twin.pt", a)
    write_embedding(root / "ids" / "bob.pt", b)
    write_embedding(root / "ids_swapped" / "Ann.pt", b)
    noise = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    # a 224² crop around the astronaut's face at 96²: dlib finds one ~43 px face in both frames
    face = np.asarray(Image.fromarray(skdata.astronaut()[16:240, 112:336]).resize((96, 96), Image.Resampling.LANCZOS))
    return {
        "root": root, "bundle": tiny_bundle, "ids": root / "ids", "ids_swapped": root / "ids_swapped",
        "noise_video": write_frames(root / "noise_video", noise),
        "face_video": write_frames(root / "face_video", np.stack([face, face])),
    }


def render(assets: dict, name: str, prompts: list, **changes) -> Run:
    """Write a config (BASE ← changes; `model.x` keys go into the model block) and run it."""
    bundle = assets["bundle"]
    model = {"base": str(bundle["sd15"]), "motion_module": str(bundle["motion_v2"]), "motion_loras": [],
             "embeddings_dir": str(assets["ids"]), "scheduler": "ddim"}
    cfg = {**BASE, "prompts": prompts, "output_dir": str(assets["root"] / "out" / name)}
    for key, value in changes.items():
        if key.startswith("model."):
            model[key[len("model."):]] = value
        else:
            cfg[key] = value
    cfg["model"] = model
    path = assets["root"] / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return Run(Path(run_sampling(path, [], progress=False)))


def lora(assets: dict, strength: float) -> list[dict]:
    return [{"path": str(assets["bundle"]["motion_lora"]), "strength": strength}]


# ------------------------------------------------------------------------------------------------------ runs

T2V_PROMPTS = [
    PROMPT,                                                # 0: reference: top-level γ 0.1, seed 1, "lowres"
    {"prompt": PROMPT, "gamma": 0.1},                      # 1: per-prompt γ equal to the top-level one
    {"prompt": PROMPT, "gamma": 0.6},                      # 2: only γ differs
    {"prompt": PROMPT, "negative_prompt": "blurry"},       # 3: only the negative prompt differs
    {"prompt": PROMPT, "seeds": [2]},                      # 4: only the seed differs
    "a photo of embedding:Ann man",                        # 5: ComfyUI syntax for the same identity
    "a photo of man",                                      # 6: the identity removed
    "a photo of Ann man",                                  # 7: the name as plain text
    "a photo of <Ann_twin> man",                           # 8: another name, the same vectors
    "a photo of <bob> man",                                # 9: another name, other vectors
]


@pytest.fixture(scope="module")
def t2v(assets) -> Run:
    return render(assets, "t2v", T2V_PROMPTS)


@pytest.fixture(scope="module")
def lora_runs(assets) -> dict[float, Run]:
    return {s: render(assets, f"lora{s}", [PROMPT], **{"model.motion_loras": lora(assets, s)}) for s in (0.0, 0.5, 1.0)}


STAGE_PROMPTS = [
    PROMPT,                                                # 0: reference
    {"prompt": PROMPT, "gamma": 0.6},                      # 1: only γ differs
    "a photo of <bob> man",                                # 2: only the prompt (identity) differs
    {"prompt": PROMPT, "negative_prompt": "blurry"},       # 3: only the negative prompt differs
]


def face_run(assets, name, **changes) -> Run:
    """T2V replaced by the face video returned unchanged (input_strength 0), then Face VCD on it."""
    settings = {"input_video": str(assets["face_video"]), "input_strength": 0.0, "frames": 2,
                "width": 96, "height": 96, "stages": ["t2v", "face"], "face": {"detector": "dlib", "size": 32, **changes.pop("face", {})}}
    return render(assets, name, changes.pop("prompts", STAGE_PROMPTS), **{**settings, **changes})


def tiled_run(assets, name, **changes) -> Run:
    """T2V replaced by a 32² input video returned unchanged, then Tiled VCD (×2 = one 64² tile)."""
    settings = {"input_video": str(assets["noise_video"]), "input_strength": 0.0, "stages": ["t2v", "tiled"],
                "tiled": {"scale": 2, "tile": 64, "padding": 8, "strength": 1.0, **changes.pop("tiled", {})}}
    return render(assets, name, changes.pop("prompts", STAGE_PROMPTS), **{**settings, **changes})


@pytest.fixture(scope="module")
def face(assets) -> Run:
    return face_run(assets, "face")


@pytest.fixture(scope="module")
def tiled(assets) -> Run:
    return tiled_run(assets, "tiled")


# ------------------------------------------------------------------------------------------------ text → video


def test_t2v_gamma_changes_the_video_and_the_same_gamma_reproduces_it(t2v):
    """γ reaches T2V's noise prior: 0.1 given per prompt == the top-level 0.1 bit for bit; 0.6 differs."""
    assert [t2v.record(i, "t2v")["gamma"] for i in (0, 1, 2)] == [0.1, 0.1, 0.6]
    assert same(t2v.video(1), t2v.video(0))
    assert not same(t2v.video(2), t2v.video(0))


def test_per_prompt_negative_prompt_and_seeds_are_used(t2v):
    """A prompt's own negative_prompt and seeds replace the top-level ones in what is rendered."""
    assert t2v.record(3, "t2v")["negative_prompt"] == "blurry" and t2v.record(0, "t2v")["negative_prompt"] == "lowres"
    assert t2v.record(4, "t2v")["seed"] == 2 and t2v.record(0, "t2v")["seed"] == 1
    assert not same(t2v.video(3), t2v.video(0))
    assert not same(t2v.video(4), t2v.video(0))


def test_both_identity_syntaxes_become_the_identity_token_in_t2v(t2v):
    """`embedding:Ann` and `<Ann>` render identically; the identity really is in the prompt (without it, or with
    the bare name as text, the video differs)."""
    assert same(t2v.video(5), t2v.video(0))
    assert not same(t2v.video(6), t2v.video(0))
    assert not same(t2v.video(7), t2v.video(0))


def test_identity_prompts_depend_on_the_embedding_files_values(assets, t2v):
    """The vectors in the file are what conditions the video: another name with the same vectors renders the
    same; other vectors differ; and the same name from another folder renders what those vectors render."""
    assert same(t2v.video(8), t2v.video(0))
    assert not same(t2v.video(9), t2v.video(0))
    swapped = render(assets, "swapped", [PROMPT], **{"model.embeddings_dir": str(assets["ids_swapped"])})
    assert not same(swapped.video(0), t2v.video(0))
    assert same(swapped.video(0), t2v.video(9))  # <Ann> with bob's vectors == <bob>


def test_motion_lora_is_merged_with_its_strength(t2v, lora_runs):
    """A MotionLoRA changes the video; strength 0 is bit-identical to no LoRA; 0.5 and 1.0 differ."""
    no_lora = t2v.video(0)
    assert same(lora_runs[0.0].video(0), no_lora)
    assert not same(lora_runs[1.0].video(0), no_lora)
    assert not same(lora_runs[0.5].video(0), no_lora)
    assert not same(lora_runs[0.5].video(0), lora_runs[1.0].video(0))


# ------------------------------------------------------------------------------------------- video → video


def test_editing_uses_the_samples_gamma_and_prompt(assets):
    """Re-rendering an input video (input_strength 0.5 of 2 steps = 1 step) noises it with the sample's γ and
    denoises with the sample's prompt; the same settings reproduce it bit for bit."""
    prompts = [PROMPT, {"prompt": PROMPT, "gamma": 0.6}, "a photo of <bob> man", PROMPT]
    edit = render(assets, "edit", prompts, input_video=str(assets["noise_video"]), input_strength=0.5)
    assert [r["stage"] for r in edit.records] == [EDIT] * 4
    assert same(edit.video(3, EDIT), edit.video(0, EDIT))
    assert not same(edit.video(1, EDIT), edit.video(0, EDIT))  # γ 0.6
    assert not same(edit.video(2, EDIT), edit.video(0, EDIT))  # <bob>


def test_face_stage_gets_the_same_input_for_every_sample(assets, face):
    """Precondition of the face tests: input_strength 0 hands the input video unchanged to the face stage, for
    every sample, and the face stage does change it."""
    source = read_pngs(assets["face_video"])
    for index in range(len(STAGE_PROMPTS)):
        assert same(face.video(index, EDIT), source)
    assert not same(face.video(0, "face"), source)


def test_face_stage_uses_the_samples_gamma_prompt_and_negative_prompt(face):
    """Face VCD re-noises with the sample's γ and denoises with the sample's prompt and negative prompt (its input
    is the same for all samples, see above)."""
    reference = face.video(0, "face")
    assert not same(face.video(1, "face"), reference)  # γ 0.6
    assert not same(face.video(2, "face"), reference)  # <bob>
    assert not same(face.video(3, "face"), reference)  # negative "blurry"


def test_face_stage_overrides_gamma_steps_guidance_and_strength(assets, face):
    """face.gamma/steps/guidance_scale replace the sample's γ and the run's steps/guidance: a run with other
    run-level values but those overrides renders exactly the face of the γ-0.6 sample above. face.strength changes
    the face."""
    overridden = face_run(assets, "face-overrides", prompts=[PROMPT], steps=3, guidance_scale=3.0,
                          face={"gamma": 0.6, "steps": 2, "guidance_scale": 7.5})
    assert not same(face.video(1, "face"), face.video(0, "face"))
    assert same(overridden.video(0, "face"), face.video(1, "face"))
    weaker = face_run(assets, "face-strength", prompts=[PROMPT], face={"strength": 0.5})
    assert not same(weaker.video(0, "face"), face.video(0, "face"))


def test_tiled_stage_uses_the_samples_gamma_prompt_and_negative_prompt(assets, tiled):
    """Tiled VCD re-noises with the sample's γ and denoises with the sample's prompt; its input (the 32² video
    returned unchanged) is the same for every sample."""
    source = read_pngs(assets["noise_video"])
    assert all(same(tiled.video(i, EDIT), source) for i in range(len(STAGE_PROMPTS)))
    reference = tiled.video(0, "tiled")
    assert reference.shape == (3, 64, 64, 3)
    assert not same(tiled.video(1, "tiled"), reference)  # γ 0.6
    assert not same(tiled.video(2, "tiled"), reference)  # <bob>
    assert not same(tiled.video(3, "tiled"), reference)  # negative "blurry"


def test_tiled_stage_overrides_gamma_steps_guidance_and_strength(assets, tiled):
    """tiled.gamma/steps/guidance_scale replace the sample's γ and the run's steps/guidance (exactly the γ-0.6
    sample's tiles); tiled.strength changes the tiles."""
    overridden = tiled_run(assets, "tiled-overrides", prompts=[PROMPT], steps=3, guidance_scale=3.0,
                           tiled={"gamma": 0.6, "steps": 2, "guidance_scale": 7.5})
    assert not same(tiled.video(1, "tiled"), tiled.video(0, "tiled"))
    assert same(overridden.video(0, "tiled"), tiled.video(1, "tiled"))
    weaker = tiled_run(assets, "tiled-strength", prompts=[PROMPT], tiled={"strength": 0.5})
    assert not same(weaker.video(0, "tiled"), tiled.video(0, "tiled"))


# ------------------------------------------------------------------------------- the graph's VCD knobs (issue 12)

def test_face_segment_mask_changes_only_pixels_near_the_face_and_box_mode_differs(assets, face):
    """face.mask segment (the default): pixels farther than `feather` px from the face's landmark hull come out
    bit-identical to the input; pixels of the face change. face.mask box regenerates the whole face box instead."""
    from scipy import ndimage

    from magicme.faces import DlibFaces

    source = read_pngs(assets["face_video"])
    _, hulls = DlibFaces(min_face=10, landmarks=True).segment(source.astype(np.float32) / 255.0)
    near = ndimage.binary_dilation(hulls.any(axis=0), structure=np.ones((11, 11)))  # feather 5 reaches 5 px
    changed = (face.video(0, "face") != source).any(axis=(0, 3))
    assert changed[hulls.any(axis=0)].any() and not changed[~near].any()
    boxed = face_run(assets, "face-box", prompts=[PROMPT], face={"mask": "box"})
    assert not same(boxed.video(0, "face"), face.video(0, "face"))


def test_stage_schedulers_and_tiled_sharpen_change_the_result(assets, face, tiled):
    assert not same(face_run(assets, "face-euler", prompts=[PROMPT], face={"scheduler": "euler"}).video(0, "face"),
                    face.video(0, "face"))
    assert not same(tiled_run(assets, "tiled-euler", prompts=[PROMPT], tiled={"scheduler": "euler"}).video(0, "tiled"),
                    tiled.video(0, "tiled"))
    assert not same(tiled_run(assets, "tiled-sharp", prompts=[PROMPT], tiled={"sharpen": 0.5}).video(0, "tiled"),
                    tiled.video(0, "tiled"))


def test_freeu_reaches_every_sampler_and_at_one_changes_nothing(assets, t2v):
    """freeu with b = s = 1 renders T2V bit-identical to no FreeU; the graph's FreeU_V2 changes it, and V1 differs
    from V2 (the tiny UNet's 2×-base decoder level is where b2/s2 act)."""
    ones = render(assets, "freeu-ones", [PROMPT], freeu={"b1": 1.0, "b2": 1.0, "s1": 1.0, "s2": 1.0})
    v2 = render(assets, "freeu-v2", [PROMPT], freeu={})
    v1 = render(assets, "freeu-v1", [PROMPT], freeu={"version": 1})
    assert same(ones.video(0), t2v.video(0))
    assert not same(v2.video(0), t2v.video(0)) and not same(v1.video(0), v2.video(0))
    tiled_plain = tiled_run(assets, "tiled-plain", prompts=[PROMPT])
    tiled_freeu = tiled_run(assets, "tiled-freeu", prompts=[PROMPT], freeu={})
    assert not same(tiled_freeu.video(0, "tiled"), tiled_plain.video(0, "tiled"))
