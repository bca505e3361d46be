"""The SD-XL family on the tiny SD-XL bundle (magicme/tiny/sdxl.py): its file formats, the family checks made
before anything loads, and T2V end to end through `sample.py` / `run_sampling` (3D prior, identity tokens in both
text encoders)."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import sample
from magicme.embeddings import load_sdxl_embedding_file, read_class_word, save_sdxl_embedding
from magicme.errors import ConfigError
from magicme.families import sdxl
from magicme.families.sd15 import make_scheduler
from magicme.inspector import inspect_motion_module, tensor_shapes
from magicme.noise_prior import sample_noise_prior
from magicme.sampling import run_sampling
from magicme.prompts import to_pipeline_prompt
from magicme.schema import check_sample_config, load_sample_config, model_config
from magicme.tiny.motion import save_original_motion_lora
from magicme.tiny.sdxl import TEXT_WIDTHS, TIME_EMBED, UNET_CHANNELS, tiny_sdxl_motion_adapter

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "tiny" / "sample_sdxl.yaml"
SD15_CONFIG = REPO / "configs" / "tiny" / "sample.yaml"
# the shipped config also runs face + tiled (as configs/sample/sdxl.yaml); these tests look at the first stage
FAST = ["steps=2", "frames=2", "width=32", "height=32", "device=cpu", "precision=fp32", "save_frames=true",
        "formats=[gif]", "stages=[t2v]"]


@pytest.fixture()
def in_repo_layout(tmp_path, tiny_bundle, monkeypatch):
    """A working folder where the tiny configs' `models/tiny/...` paths are the session's bundle."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "tiny").symlink_to(tiny_bundle["sd15"].parent)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def unet_calls(monkeypatch) -> list:
    """Every UNet call of the pipeline the run loads: input latents, cross-attention and added conditioning."""
    calls, load = [], sdxl.load

    def record(module, args, kwargs):
        calls.append({"sample": args[0].detach().clone(), "text": kwargs["encoder_hidden_states"].detach().clone(),
                      "added": {k: v.detach().clone() for k, v in kwargs["added_cond_kwargs"].items()}})

    def loading(*args, **kwargs):
        pipe = load(*args, **kwargs)
        pipe.t2v.unet.register_forward_pre_hook(record, with_kwargs=True)
        return pipe

    monkeypatch.setattr(sdxl, "load", loading)
    return calls


def checked(*overrides: str):
    return check_sample_config(load_sample_config(CONFIG, list(overrides)))


def read_pngs(folder: Path) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("*.png"))])


# --- the tiny SD-XL files -------------------------------------------------------------------------------------------


def test_tiny_sdxl_bundle_has_the_real_layouts(tiny_bundle):
    base = tiny_bundle["sdxl"]
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        assert (base / part / "config.json").is_file()
    assert (base / "scheduler" / "scheduler_config.json").is_file()
    for part in ("tokenizer", "tokenizer_2"):
        assert (base / part / "vocab.json").is_file()
    assert json.loads((base / "text_encoder_2" / "config.json").read_text())["architectures"] == [
        "CLIPTextModelWithProjection"]
    unet = json.loads((base / "unet" / "config.json").read_text())
    assert unet["addition_embed_type"] == "text_time"
    assert unet["projection_class_embeddings_input_dim"] == TEXT_WIDTHS[1] + 6 * TIME_EMBED
    assert unet["cross_attention_dim"] == sum(TEXT_WIDTHS)
    # the motion module: original AnimateDiff keys, three UNet levels, no mid block, 32 frames (mm_sdxl_v10_beta)
    shapes = tensor_shapes(tiny_bundle["motion_sdxl"])
    assert all(".temporal_transformer." in k for k in shapes)
    assert {k.split(".")[1] for k in shapes if k.startswith("down_blocks.")} == {"0", "1", "2"}
    assert not any(k.startswith("mid_block.") for k in shapes)
    info = inspect_motion_module(shapes, tiny_bundle["motion_sdxl"])
    assert (info.family, info.block_out_channels, info.max_seq_length, info.layout) == (
        "sdxl", UNET_CHANNELS, 32, "original")
    # the identity: the A1111/ComfyUI SDXL file, one tensor per encoder
    tensors = load_file(tiny_bundle["embedding_sdxl"])
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {"clip_l": (4, TEXT_WIDTHS[0]),
                                                               "clip_g": (4, TEXT_WIDTHS[1])}


def test_sdxl_embedding_round_trip(tmp_path):
    clip_l, clip_g = torch.randn(3, 768), torch.randn(3, 1280)
    path = save_sdxl_embedding(tmp_path / "ann.safetensors", clip_l, clip_g, class_word="woman")
    read_l, read_g = load_sdxl_embedding_file(path)
    assert torch.equal(read_l, clip_l) and torch.equal(read_g, clip_g)
    assert read_class_word(path) == "woman"


# --- checks before loading ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides,message", [
    (["model.motion_module=models/tiny/motion_module/mm_tiny_v2.ckpt"],
     "model.motion_module: models/tiny/motion_module/mm_tiny_v2.ckpt: an SD1.5 motion module, but model.family is "
     "sdxl"),
    (["model.base=models/tiny/sd15"], "model.base: models/tiny/sd15: an SD1.5 model, but model.family is sdxl"),
    (["model.embeddings_dir=models/tiny/embeddings"], "not an SDXL embedding (no clip_l and clip_g tensors"),
    (["model.motion_loras=[{path: sdxl_lora.ckpt}]"], "model.motion_loras: the MotionLoRAs are made for SD1.5"),
    (["prompts=[a photo of embedding:nobody man]"], "unknown identity 'nobody'"),
    (["model.base=models/xl-missing"], "model.base: models/xl-missing: not found; run: bash download_checkpoint.sh "
                                       "--only sdxl"),
    (["model.motion_module=models/mm-missing.ckpt"], "not found; run: bash download_checkpoint.sh --only sdxl"),
    (["control=[{model: models/tiny/controlnet, video: models/tiny/clips/control_square.gif}]"],
     "control: ControlNets are not wired for model.family sdxl yet"),
])
def test_sdxl_config_errors_before_loading(in_repo_layout, monkeypatch, overrides, message):
    save_original_motion_lora(tiny_sdxl_motion_adapter(), "sdxl_lora.ckpt")  # fits the SDXL module's keys
    monkeypatch.setattr(sdxl, "load", lambda *a, **k: pytest.fail("loaded a model"))
    with pytest.raises(ConfigError) as err:
        checked(*overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_sdxl_files_in_an_sd15_run_are_one_error(in_repo_layout):
    sd15 = SD15_CONFIG
    with pytest.raises(ConfigError, match="model.motion_module: .*mm_sdxl_tiny_beta.ckpt: an SDXL motion module, "
                                          "but model.family is sd15"):
        check_sample_config(load_sample_config(sd15, ["model.motion_module=models/tiny/motion_module/"
                                                      "mm_sdxl_tiny_beta.ckpt", "model.motion_loras=[]"]))
    with pytest.raises(ConfigError, match=r"an SDXL embedding \(clip_l, clip_g\), but the base is SD1.5"):
        check_sample_config(load_sample_config(sd15, ["model.embeddings_dir=models/tiny/embeddings_sdxl"]))


# --- sampling -------------------------------------------------------------------------------------------------------


def test_tiny_sdxl_config_renders_from_the_3d_prior(in_repo_layout, monkeypatch):
    """configs/tiny/sample_sdxl.yaml through sample.py: the first UNet input is seed 42's 3D prior noise (γ 0.1),
    as the scheduler scales it; cross-attention sees both encoders; SD-XL's added conditioning is there."""
    calls = unet_calls(monkeypatch)
    assert sample.main(["--config", str(CONFIG), "--quiet", "output_dir=out", "stages=[t2v]"]) == 0
    (run_dir,) = Path("out").iterdir()
    records = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert [(r["frames"], r["height"], r["width"], r["seed"]) for r in records] == [(8, 64, 64, 42)]
    assert len(calls) == 4  # 4 steps, prompt and negative batched
    scheduler = make_scheduler({"name": "ddim"})
    scheduler.set_timesteps(4)
    prior = sample_noise_prior((1, 4, 8, 8, 8), 0.1, torch.Generator().manual_seed(42))
    expected = scheduler.scale_model_input(prior * scheduler.init_noise_sigma, scheduler.timesteps[0])
    assert torch.allclose(calls[0]["sample"][1], expected[0], atol=1e-6)  # [negative, positive] halves, same noise
    assert calls[0]["text"].shape[-1] == sum(TEXT_WIDTHS)
    assert calls[0]["added"]["text_embeds"].shape[-1] == TEXT_WIDTHS[1]
    assert calls[0]["added"]["time_ids"][0].tolist() == [64, 64, 0, 0, 64, 64]


def test_each_encoders_identity_vectors_reach_the_video(in_repo_layout, tiny_bundle, tmp_path):
    """One run, four identities: the tiny one, the same with only its clip_l or only its clip_g vectors changed,
    and the same file again. Changing either encoder's vectors changes the video; the copy renders identically."""
    clip_l, clip_g = load_sdxl_embedding_file(tiny_bundle["embedding_sdxl"])
    folder = tmp_path / "ids"
    save_sdxl_embedding(folder / "ann.safetensors", clip_l, clip_g)
    save_sdxl_embedding(folder / "twin.safetensors", clip_l, clip_g)
    save_sdxl_embedding(folder / "otherl.safetensors", clip_l.flip(0) * 50, clip_g)
    save_sdxl_embedding(folder / "otherg.safetensors", clip_l, clip_g.flip(0) * 50)
    prompts = [f"a photo of <{name}> man" for name in ("ann", "twin", "otherl", "otherg")]
    run_dir = run_sampling(CONFIG, [*FAST, f"model.embeddings_dir={folder}", f"prompts={json.dumps(prompts)}",
                                    "seeds=[3]", "output_dir=out"], progress=False)
    records = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    ann, twin, other_l, other_g = (read_pngs(run_dir / r["files"]["frames"]) for r in records)
    assert np.array_equal(ann, twin)
    assert not np.array_equal(ann, other_l) and not np.array_equal(ann, other_g)


@pytest.fixture(scope="module")
def sdxl_pipeline(tiny_bundle):
    model = model_config({"family": "sdxl", "base": str(tiny_bundle["sdxl"]),
                          "motion_module": str(tiny_bundle["motion_sdxl"]), "animatediff_numerics": "diffusers"})
    return sdxl.load(model, {"tinyperson": tiny_bundle["embedding_sdxl"]}, device="cpu", precision="fp32")


def test_original_numerics_leave_the_sdxl_unet_stock(tiny_bundle):
    """`animatediff_numerics: original` (the default) with an SD-XL module: the AnimateDiff SD-XL code computes what
    stock diffusers does (tests/test_parity.py), so SD1.5's per-frame motion GroupNorm must not be applied; the
    scheduler gets AnimateDiff SD-XL's betas."""
    model = model_config({"family": "sdxl", "base": str(tiny_bundle["sdxl"]),
                          "motion_module": str(tiny_bundle["motion_sdxl"])})
    assert model.animatediff_numerics == "original"
    pipe = sdxl.load(model, {}, device="cpu", precision="fp32")
    norms = {type(m).__name__ for m in pipe.t2v.unet.modules() if isinstance(m, torch.nn.GroupNorm)}
    assert norms == {"GroupNorm"}
    assert {k: pipe.t2v.scheduler.config[k] for k in sdxl.SDXL_BETAS} == sdxl.SDXL_BETAS


@pytest.mark.parametrize("negative", ["blurry, lowres", ""])
def test_sdxl_prompt_encoding_is_diffusers_for_plain_prompts(sdxl_pipeline, negative):
    """An unweighted prompt (with an identity) of ≤ 75 tokens: exactly the four tensors diffusers' own
    `encode_prompt` gives (an empty negative prompt: diffusers' zeros)."""
    prompt = "a photo of embedding:tinyperson man walking"
    ours = sdxl_pipeline.prompts.encode_pair(prompt, negative)
    theirs = sdxl_pipeline.t2v.encode_prompt(to_pipeline_prompt(prompt), device=torch.device("cpu"),
                                             negative_prompt=to_pipeline_prompt(negative) or None)
    names = ["prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds"]
    for name, tensor in zip(names, theirs, strict=True):
        assert torch.equal(ours[name], tensor), name
    assert not torch.equal(ours["prompt_embeds"], sdxl_pipeline.prompts.encode_pair("a photo of man walking",
                                                                                   negative)["prompt_embeds"])


def test_sdxl_repeats_the_shorter_conditioning_in_both_encoders(sdxl_pipeline):
    """A 1-chunk prompt with a 2-chunk negative: the prompt's rows (both encoders' halves) are its one chunk twice,
    bit for bit, as ComfyUI repeats; the pooled vectors are the first chunk's."""
    prompt, negative = "a photo of embedding:tinyperson man", "x " * 100  # tiny tokenizer: a token a character
    prompts = sdxl_pipeline.prompts
    pair = prompts.encode_pair(prompt, negative)
    one, pooled = prompts.conditioning(prompt, 1)
    assert one.shape[1] == 77 and prompts.chunks(negative) == 2
    assert torch.equal(pair["prompt_embeds"], torch.cat([one, one], dim=1))
    assert torch.equal(pair["negative_prompt_embeds"], prompts.encode(negative))
    assert torch.equal(pair["pooled_prompt_embeds"], pooled)


def test_prompt_weighting_none_reaches_both_encoders(sdxl_pipeline):
    """`prompt_weighting: none`: the text goes to both encoders as written, parentheses and all, as diffusers reads
    it; with comfy weighting the same text is parsed into a weight."""
    prompt = "a photo of (man:1.5)"
    theirs = sdxl_pipeline.t2v.encode_prompt(prompt, device=torch.device("cpu"), negative_prompt=None)
    try:
        sdxl_pipeline.prompts.weighting = "none"
        literal = sdxl_pipeline.prompts.encode_pair(prompt, "")
    finally:
        sdxl_pipeline.prompts.weighting = "comfy"
    assert torch.equal(literal["prompt_embeds"], theirs[0]) and torch.equal(literal["pooled_prompt_embeds"], theirs[2])
    assert not torch.equal(sdxl_pipeline.prompts.encode_pair(prompt, "")["prompt_embeds"], theirs[0])


def test_weights_and_long_prompts_reach_the_sdxl_video(in_repo_layout, monkeypatch):
    """One run: a prompt, the same with its identity weighted 1.5, and one of more than 75 tokens. The weight
    changes the video; the long prompt is read whole (2 chunks of 77 in the cross-attention)."""
    calls = unet_calls(monkeypatch)
    long = "a photo of <tinyperson> man " + "walking " * 12
    prompts = ["a photo of <tinyperson> man", "a photo of (<tinyperson>:1.5) man", long]
    run_dir = run_sampling(CONFIG, [*FAST, f"prompts={json.dumps(prompts)}", "seeds=[3]", "output_dir=out"],
                           progress=False)
    records = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    plain, weighted, _ = (read_pngs(run_dir / r["files"]["frames"]) for r in records)
    assert not np.array_equal(plain, weighted)
    assert [c["text"].shape[1] for c in calls] == [77, 77, 77, 77, 154, 154]


def test_context_windows_work_for_sdxl(in_repo_layout, monkeypatch):
    """40 frames, more than the SDXL module's 32, in windows of 16: the UNet's layers never see more than 16
    frames at once (its first convolution gets (negative + positive) × 16 frames)."""
    rows, load = [], sdxl.load

    def loading(*args, **kwargs):
        pipe = load(*args, **kwargs)
        pipe.t2v.unet.conv_in.register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[0]))
        return pipe

    monkeypatch.setattr(sdxl, "load", loading)
    run_dir = run_sampling(CONFIG, [*FAST, "frames=40", "context={length: 16, overlap: 4}", "prompts=[a photo]",
                                    "output_dir=out"], progress=False)
    (record,) = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert record["frames"] == 40 and len(read_pngs(run_dir / record["files"]["frames"])) == 40
    assert rows and set(rows) == {2 * 16}


def test_check_models_reads_the_sdxl_files(in_repo_layout, capsys):
    spec = importlib.util.spec_from_file_location("check_models", REPO / "scripts" / "check_models.py")
    check_models = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check_models)
    assert check_models.main(["--config", str(CONFIG)]) == 0
    table = capsys.readouterr().out
    assert "text width 32 + 48" in table and "AnimateDiff SDXL, 32 frames max, channels (32, 64, 64)" in table
    assert check_models.main(["--config", str(CONFIG), "model.base=models/tiny/sd15"]) == 1


# --- single-file SD-XL bases ----------------------------------------------------------------------------------------


def test_single_file_sdxl_base_is_read_exactly_and_renders_as_its_folder(in_repo_layout, tiny_bundle):
    """The tiny SD-XL folder written as one file in `sd_xl_base_1.0.safetensors`'s layout (both encoders, OpenCLIP
    naming for the second): diffusers' `from_single_file` reads every tensor back exactly, the inspector reports
    both encoders' widths, and a run from the file with `base_config` renders the folder's video (to one level
    of 255: the same weights, loaded into differently aligned memory, round the pooled projection differently by
    ~2e-7)."""
    from diffusers import StableDiffusionXLPipeline

    from magicme.inspector import inspect_model
    from magicme.tiny.sdxl import save_tiny_sdxl_single_file

    folder = tiny_bundle["sdxl"]
    path = save_tiny_sdxl_single_file(folder, in_repo_layout / "xl_tiny.safetensors")
    pipe = StableDiffusionXLPipeline.from_single_file(str(path), config=str(folder), local_files_only=True)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        ours = getattr(pipe, name).state_dict()
        theirs = getattr(sdxl.load_base(str(folder), None, torch.float32), name).state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), name
    report = inspect_model(model_config({"family": "sdxl", "base": str(path), "base_config": str(folder),
                                         "motion_module": str(tiny_bundle["motion_sdxl"])}))
    assert report.ok and "text width 32 + 48" in report.table()
    runs = [run_sampling(CONFIG, [*FAST, "seeds=[3]", f"output_dir=out{i}", *base], progress=False)
            for i, base in enumerate([[], [f"model.base={path}", f"model.base_config={folder}"]])]
    folder_run, file_run = (read_pngs(r / json.loads((r / "samples.jsonl").read_text().splitlines()[0])["files"]
                                      ["frames"]) for r in runs)
    assert np.abs(folder_run.astype(int) - file_run).max() <= 1


@pytest.mark.parametrize("base_config,message", [
    (None, "a single-file base needs a diffusers SDXL folder (configs + tokenizer); run: bash download_checkpoint.sh "
           "--only sdxl"),
    ("models/tiny/sd15", "an SD1.5 model folder, but xl_tiny.safetensors is an SDXL model; give the SDXL folder"),
])
def test_single_file_sdxl_base_config_errors_before_loading(in_repo_layout, tiny_bundle, monkeypatch, base_config,
                                                           message):
    from magicme.tiny.sdxl import save_tiny_sdxl_single_file

    save_tiny_sdxl_single_file(tiny_bundle["sdxl"], in_repo_layout / "xl_tiny.safetensors")
    monkeypatch.setattr(sdxl, "load", lambda *a, **k: pytest.fail("loaded a model"))
    overrides = ["model.base=xl_tiny.safetensors"] + ([f"model.base_config={base_config}"] if base_config else [])
    with pytest.raises(ConfigError) as err:
        checked(*overrides)
    assert message in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="an SDXL model, but model.family is sd15; set model.family: sdxl"):
        check_sample_config(load_sample_config(SD15_CONFIG, ["model.base=xl_tiny.safetensors"]))


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_every_2d_weight_of_the_base_reaches_the_motion_unet(tiny_bundle, family):
    """diffusers' `from_unet2d` leaves SD-XL's `add_embedding` (pooled text + size/crop conditioning) random; the
    loaded video UNet must carry every weight of the base's 2D UNet, for both families."""
    from diffusers import UNet2DConditionModel

    from magicme.families import get_family

    base = tiny_bundle[family]
    motion = tiny_bundle["motion_sdxl" if family == "sdxl" else "motion_v2"]
    model = model_config({"family": family, "base": str(base), "motion_module": str(motion)})
    unet = get_family(family).load(model, {}, device="cpu", precision="fp32").t2v.unet.state_dict()
    for key, value in UNet2DConditionModel.from_pretrained(base, subfolder="unet").state_dict().items():
        assert torch.equal(unet[key], value), key
