"""The few-step path (docs/fewstep.md): AnimateDiff-Lightning motion modules in both layouts, AnimateLCM's module and
SD1.5 LoRA (`model.loras`), the `lightning` / `lcm` schedulers, guidance 1, partial denoise with them, and the tiny
configs — on the tiny bundle's fixtures, which have the released files' key formats."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from diffusers import LCMScheduler, UNetMotionModel

import magicme.families.sd15 as sd15
import sample
from magicme.errors import ConfigError
from magicme.families.sd15 import make_scheduler, scheduler_spec
from magicme.inspector import inspect_model, motion_layout, tensor_shapes
from magicme.motion_module import load_motion_adapter, read_state_dict
from magicme.noise_prior import sample_noise_prior
from magicme.schema import check_sample_config, load_sample_config, model_config
from magicme.speed import attention_kernel
from magicme.tiny.sd import tiny_motion_adapter

REPO = Path(__file__).resolve().parents[1]
LIGHTNING, LCM = REPO / "configs/tiny/sample_lightning.yaml", REPO / "configs/tiny/sample_lcm.yaml"
PROMPT = "a photo of embedding:tinyperson man walking on the street"


@pytest.fixture
def in_repo_layout(tmp_path, tiny_bundle, monkeypatch):
    """A working folder where the tiny configs' `models/tiny/...` paths are the session's bundle."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "tiny").symlink_to(tiny_bundle["sd15"].parent)
    monkeypatch.chdir(tmp_path)
    return tmp_path


class UnetCalls(list):
    """Every UNet call of the pipeline a run loads (batch size, timestep, input latents, text conditioning)."""

    pipe = None


def unet_calls(monkeypatch) -> UnetCalls:
    calls, load = UnetCalls(), sd15.load

    def record(module, args, kwargs):
        sample_, timestep = args[0], args[1]
        calls.append({"batch": sample_.shape[0], "t": int(torch.as_tensor(timestep).flatten()[0]),
                      "sample": sample_.detach().clone(), "text": kwargs["encoder_hidden_states"].detach().clone()})

    def loading(*args, **kwargs):
        calls.pipe = load(*args, **kwargs)
        calls.pipe.t2v.unet.register_forward_pre_hook(record, with_kwargs=True)
        return calls.pipe

    monkeypatch.setattr(sd15, "load", loading)
    return calls


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]


# --- motion modules ---------------------------------------------------------------------------------------------


def test_layout_is_read_from_the_keys_not_the_name(tiny_bundle, tmp_path):
    assert motion_layout(tensor_shapes(tiny_bundle["motion_lightning"])) == "diffusers"
    assert motion_layout(tensor_shapes(tiny_bundle["motion_lightning_comfyui"])) == "original"
    misnamed = tmp_path / "animatediff_lightning_4step_comfyui.safetensors"
    shutil.copy(tiny_bundle["motion_lightning"], misnamed)
    _, info = load_motion_adapter(misnamed)
    assert (info.layout, info.version, info.max_seq_length) == ("diffusers", "v2", 32)


def test_both_lightning_layouts_give_identical_unet_outputs(tiny_bundle):
    """The same weights saved as Lightning's `_diffusers` and `_comfyui` files: the same UNetMotionModel output."""
    from diffusers import UNet2DConditionModel

    base = UNet2DConditionModel.from_pretrained(tiny_bundle["sd15"], subfolder="unet")
    x = torch.randn(1, 4, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    text = torch.randn(8, 5, 32, generator=torch.Generator().manual_seed(1))
    outputs = []
    for key in ("motion_lightning", "motion_lightning_comfyui"):
        adapter, info = load_motion_adapter(tiny_bundle[key])
        unet = UNetMotionModel.from_unet2d(base, adapter).eval()
        with torch.no_grad():
            outputs.append(unet(x, 500, encoder_hidden_states=text).sample)
    assert torch.equal(outputs[0], outputs[1])
    adapter, _ = load_motion_adapter(tiny_bundle["motion_v2"])  # other weights of the same shape: another output
    with torch.no_grad():
        other = UNetMotionModel.from_unet2d(base, adapter).eval()(x, 500, encoder_hidden_states=text).sample
    assert not torch.allclose(other, outputs[0])


def test_animatelcm_module_has_no_positional_tensors_and_gets_the_sinusoids(tiny_bundle):
    assert not any("pos_encoder" in k for k in tensor_shapes(tiny_bundle["motion_animatelcm"]))
    adapter, info = load_motion_adapter(tiny_bundle["motion_animatelcm"])
    assert (info.layout, info.positional_weights, info.max_seq_length, info.mid_block) == ("original", False, 64, True)
    key = "down_blocks.0.motion_modules.0.transformer_blocks.0.pos_embed.pe"
    reference = tiny_motion_adapter("v2").state_dict()[key]  # 32 frames of the same sinusoids
    assert torch.equal(adapter.state_dict()[key][:, :32], reference)


def test_doctor_rows_say_layout_and_lora(tiny_bundle):
    block = {"base": str(tiny_bundle["sd15"]), "base_config": None, "embeddings_dir": None,
             "motion_module": str(tiny_bundle["motion_animatelcm"]),
             "loras": [{"path": str(tiny_bundle["lora_animatelcm"]), "strength": 0.8}]}
    report = inspect_model(model_config(block))
    assert report.ok, report.table()
    detail = {c.item: c.detail for c in report.checks}
    assert detail["model.motion_module"].endswith("original layout, no positional tensors (AnimateLCM): sinusoids "
                                                  "rebuilt")
    assert detail["model.loras[0].path"] == "LoRA, 117 layers, rank 8, strength 0.8"
    report = inspect_model(model_config({**block, "motion_module": str(tiny_bundle["motion_lightning"]),
                                         "motion_loras": [{"path": str(tiny_bundle["motion_lora"])}]}))
    assert report.ok, report.table()
    assert report.checks[1].detail.endswith("diffusers layout")  # the MotionLoRA fits a diffusers-layout module


# --- SD1.5 image LoRAs ------------------------------------------------------------------------------------------


def render(tiny_bundle, loras, scheduler="lcm"):
    model = model_config({"base": str(tiny_bundle["sd15"]), "base_config": None, "scheduler": scheduler,
                          "motion_module": str(tiny_bundle["motion_animatelcm"]), "embeddings_dir": None,
                          "loras": loras})
    pipe = sd15.load(model, {}, device="cpu")
    return pipe, pipe.text_to_video("a man", "", torch.Generator().manual_seed(3), gamma=0.1, frames=4, height=32,
                                    width=32, steps=2, guidance_scale=1.0, progress=False)


def test_lora_strength_is_fused_by_diffusers(tiny_bundle):
    lora = str(tiny_bundle["lora_animatelcm"])
    plain_pipe, plain = render(tiny_bundle, [])
    _, zero = render(tiny_bundle, [{"path": lora, "strength": 0.0}])
    pipe, full = render(tiny_bundle, [{"path": lora, "strength": 1.0}])
    assert np.array_equal(zero, plain) and not np.allclose(full, plain, atol=1e-3)
    # fused, LoRA layers gone: plain parameter names, each targeted weight moved by alpha/rank · up @ down
    lora_state = read_state_dict(lora)
    name = "lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"
    delta = lora_state[f"{name}.lora_up.weight"] @ lora_state[f"{name}.lora_down.weight"] / 8  # alpha 1, rank 8
    key = "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    params, plain_params = dict(pipe.t2v.unet.named_parameters()), dict(plain_pipe.t2v.unet.named_parameters())
    assert params.keys() == plain_params.keys()
    assert torch.allclose(params[key], plain_params[key] + delta, atol=1e-6)


@pytest.mark.parametrize("content,message", [
    (None, "model.loras[0].path: missing.safetensors: not found"),
    (b"\x00" * 40, "model.loras[0].path: garbage.safetensors: corrupt safetensors file"),
    ("motion_lora", "a MotionLoRA or motion module, not an image LoRA; list MotionLoRAs under model.motion_loras"),
    ("motion_lightning", "a MotionLoRA or motion module, not an image LoRA"),
])
def test_bad_lora_is_one_error_before_anything_loads(in_repo_layout, tiny_bundle, monkeypatch, capsys, content,
                                                      message):
    if content is None:
        path = Path("missing.safetensors")
    elif isinstance(content, bytes):
        path = Path("garbage.safetensors")
        path.write_bytes(content)
    else:
        path = tiny_bundle[content]
    monkeypatch.setattr(sd15, "load_base", lambda *a, **k: pytest.fail("the base loaded before the LoRA check"))
    assert sample.main(["--config", str(LCM), "--quiet", f"model.loras=[{{path: {path}, strength: 1.0}}]",
                        "output_dir=out"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not Path("out").exists()


def test_lora_whose_keys_fit_no_layer_is_an_error_at_load(tiny_bundle, tmp_path):
    from safetensors.torch import save_file

    bogus = tmp_path / "bogus.safetensors"
    save_file({"lora_unet_nowhere_block.lora_down.weight": torch.zeros(4, 8),
               "lora_unet_nowhere_block.lora_up.weight": torch.zeros(8, 4)}, str(bogus))
    model = model_config({"base": str(tiny_bundle["sd15"]), "base_config": None, "embeddings_dir": None,
                          "motion_module": str(tiny_bundle["motion_v2"]), "loras": [{"path": str(bogus)}]})
    with pytest.raises(ConfigError, match=r"^model.loras\[0\].path: .*bogus.safetensors: "):
        sd15.load(model, {}, device="cpu")


def test_v3_adapter_in_animatediff_layout_is_merged_as_the_original_code_merges_it(tiny_bundle, tmp_path):
    """AnimateDiff v3's domain adapter (`v3_sd15_adapter.ckpt`) is a LoRA in AnimateDiff's own key layout, which
    diffusers' `load_lora_weights` finds no keys in; each targeted weight must move by strength · up @ down."""
    adapter = str(tiny_bundle["lora_v3_adapter"])
    plain_pipe, plain = render(tiny_bundle, [], scheduler="ddim")
    _, zero = render(tiny_bundle, [{"path": adapter, "strength": 0.0}], scheduler="ddim")
    pipe, merged = render(tiny_bundle, [{"path": adapter, "strength": 0.7}], scheduler="ddim")
    assert np.array_equal(zero, plain) and not np.allclose(merged, plain, atol=1e-3)
    state = read_state_dict(adapter)
    params, plain_params = dict(pipe.t2v.unet.named_parameters()), dict(plain_pipe.t2v.unet.named_parameters())
    for attention, proj, weight in [("down_blocks.0.attentions.1.transformer_blocks.0.attn2", "to_k", "to_k"),
                                    ("up_blocks.1.attentions.2.transformer_blocks.0.attn1", "to_out", "to_out.0")]:
        down, up = (state[f"{attention}.processor.{proj}_lora.{side}.weight"] for side in ("down", "up"))
        key = f"{attention}.{weight}.weight"
        assert torch.allclose(params[key], plain_params[key] + 0.7 * up @ down, atol=1e-6)
    moved = [k for k in params if not torch.equal(params[k], plain_params[k])]
    assert len(moved) == len(state) // 2  # those weights, nothing else
    report = inspect_model(model_config({"base": str(tiny_bundle["sd15"]), "base_config": None,
                                         "embeddings_dir": None, "motion_module": str(tiny_bundle["motion_v3"]),
                                         "loras": [{"path": adapter, "strength": 0.7}]}))
    assert report.ok, report.table()
    detail = {c.item: c.detail for c in report.checks}["model.loras[0].path"]
    assert detail == f"AnimateDiff-layout LoRA, {len(state) // 2} layers, rank 4, strength 0.7"


def test_animatediff_layout_lora_without_its_up_tensors_is_one_error_before_loading(tiny_bundle, tmp_path):
    state = read_state_dict(tiny_bundle["lora_v3_adapter"])
    up = next(k for k in state if k.endswith("_lora.up.weight"))
    torch.save({k: v for k, v in state.items() if k != up}, tmp_path / "cut.ckpt")
    report = inspect_model(model_config({"base": str(tiny_bundle["sd15"]), "base_config": None,
                                         "embeddings_dir": None, "motion_module": str(tiny_bundle["motion_v3"]),
                                         "loras": [{"path": str(tmp_path / "cut.ckpt")}]}))
    assert not report.ok
    assert {c.item: c.detail for c in report.checks}["model.loras[0].path"] == (
        f"1 '_lora.up.weight' tensors missing (e.g. {up}): an incomplete LoRA file")


def test_animatediff_layout_lora_for_another_unet_is_an_error_naming_it(tiny_bundle, tmp_path):
    bogus = tmp_path / "adapter.ckpt"
    torch.save({"down_blocks.9.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight":
                torch.zeros(4, 32), "down_blocks.9.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.up"
                ".weight": torch.zeros(32, 4)}, bogus)
    model = model_config({"base": str(tiny_bundle["sd15"]), "base_config": None, "embeddings_dir": None,
                          "motion_module": str(tiny_bundle["motion_v3"]), "loras": [{"path": str(bogus)}]})
    with pytest.raises(ConfigError, match=r"^model.loras\[0\].path: .*adapter.ckpt: 1 of the weights this "
                                          r"AnimateDiff-layout LoRA changes are not in this SD1.5 base \(e.g. "
                                          r"down_blocks.9.attentions.0.transformer_blocks.0.attn1.to_q.weight\)"):
        sd15.load(model, {}, device="cpu")


# --- schedulers -------------------------------------------------------------------------------------------------


def timesteps(block, steps: int) -> list[int]:
    scheduler = make_scheduler(block)
    scheduler.set_timesteps(steps)
    return [int(t) for t in scheduler.timesteps]


def test_lightning_preset_is_the_model_cards_euler_trailing():
    explicit = {"name": "euler", "kwargs": {"timestep_spacing": "trailing", "beta_schedule": "linear"}}
    cls, kwargs = scheduler_spec({"name": "lightning"})
    assert (cls, kwargs["timestep_spacing"], kwargs["beta_schedule"]) == scheduler_spec(explicit)[:1] + (
        "trailing", "linear")
    assert timesteps({"name": "lightning"}, 4) == timesteps(explicit, 4) == [999, 749, 499, 249]
    assert timesteps({"name": "lightning"}, 1) == [999]  # a 1-step module starts from pure noise
    assert timesteps({"name": "euler"}, 4) != [999, 749, 499, 249]  # leading spacing would not


def test_lcm_preset_is_animatelcms_scheduler():
    scheduler = make_scheduler({"name": "lcm"})
    assert isinstance(scheduler, LCMScheduler)
    assert (scheduler.config.beta_schedule, scheduler.config.original_inference_steps) == ("linear", 100)
    assert timesteps({"name": "lcm"}, 4) == [999, 749, 499, 249]


def test_a_schedule_the_lcm_scheduler_cannot_make_is_refused_before_loading(in_repo_layout, tiny_bundle):
    """Tiled VCD at strength 0.2 with 25 steps asks for a 125-step schedule; LCM picks from 100."""
    cfg = load_sample_config(LCM, ["stages=[t2v,tiled]", "steps=25", "output_dir=out"])
    with pytest.raises(ConfigError, match=r"^tiled.strength: needs a schedule of 125 steps, which model.scheduler "
                                          r"\(lcm\) cannot make"):
        check_sample_config(cfg)
    check_sample_config(load_sample_config(LCM, ["stages=[t2v,tiled]", "tiled.steps=4", "output_dir=out"]))
    own = load_sample_config(LCM, ["stages=[t2v,tiled]", "steps=25", "tiled.scheduler=lightning", "output_dir=out"])
    check_sample_config(own)  # the stage's own Euler makes any length


# --- guidance 1, the prior and the ID tokens, end to end ---------------------------------------------------------


@pytest.mark.parametrize("config", [LIGHTNING, LCM], ids=["lightning", "lcm"])
def test_tiny_fewstep_configs_render_with_one_unet_batch_per_step(in_repo_layout, monkeypatch, config):
    calls = unet_calls(monkeypatch)
    assert sample.main(["--config", str(config), "--quiet", "output_dir=out"]) == 0
    (run_dir,) = Path("out").iterdir()
    (record,) = records(run_dir)
    assert (record["frames"], record["height"], record["width"]) == (8, 64, 64)
    assert [c["batch"] for c in calls] == [1, 1, 1, 1]  # 4 steps, guidance 1: no negative-prompt half
    assert [c["t"] for c in calls] == [999, 749, 499, 249]
    pipe = calls.pipe
    # the 3D noise prior of seed 42 (gamma 0.1) is what the first step denoises, as the scheduler scales it
    scheduler = make_scheduler({"name": yaml.safe_load(config.read_text())["model"]["scheduler"]})
    scheduler.set_timesteps(4)
    prior = sample_noise_prior((1, 4, 8, 8, 8), 0.1, torch.Generator().manual_seed(42))
    expected = scheduler.scale_model_input(prior * scheduler.init_noise_sigma, scheduler.timesteps[0])
    assert torch.allclose(calls[0]["sample"], expected, atol=1e-5)
    # the conditioning is the ID prompt's (its <tinyperson> tokens), one row per frame, encoded (as in the run) with
    # the attention kernel the run used
    with attention_kernel(record["attention_kernel"]):
        positive, negative = pipe.prompts.encode_pair(PROMPT, "")
    assert torch.equal(calls[0]["text"], positive.repeat_interleave(8, dim=0))
    assert not torch.allclose(positive, pipe.prompts.encode_pair(PROMPT.replace("embedding:tinyperson ", ""), "")[0])


def test_guidance_above_one_doubles_the_batch(in_repo_layout, monkeypatch):
    calls = unet_calls(monkeypatch)
    assert sample.main(["--config", str(LIGHTNING), "--quiet", "guidance_scale=1.5", "steps=2", "output_dir=out"]) == 0
    assert [c["batch"] for c in calls] == [2, 2]


def test_face_and_tiled_vcd_with_fewstep_schedulers(in_repo_layout, tiny_bundle, monkeypatch):
    """stages [t2v, face, tiled] on the lightning config: Face VCD on its own LCM scheduler (4 steps of a 5-step
    schedule at strength 0.8), Tiled VCD on the model's trailing Euler (2 steps of 10 at 0.2)."""
    calls = unet_calls(monkeypatch)
    assert sample.main(["--config", str(LIGHTNING), "--quiet", "stages=[t2v,face,tiled]", "face.scheduler=lcm",
                        f"face.clipseg_model={tiny_bundle['clipseg']}", "face.size=32", "face.threshold=0.01",
                        "face.min_face=0", "tiled.tile=64", "tiled.padding=8", "tiled.steps=2", "frames=2",
                        "width=48", "height=48", "output_dir=out"]) == 0
    (run_dir,) = Path("out").iterdir()
    t2v, face, tiled = records(run_dir)
    assert face["passed_through"] is False and face["faces"] >= 1, face
    assert (tiled["height"], tiled["width"]) == (96, 96) and tiled["tiles"] == 4
    steps = [c["t"] for c in calls]
    assert steps[:4] == [999, 749, 499, 249]
    face_steps = steps[4:4 + 4 * face["faces"]]
    assert face_steps == [799, 599, 399, 199] * face["faces"]
    assert steps[4 + 4 * face["faces"]:] == [199, 99] * tiled["tiles"]
    assert all(c["batch"] == 1 for c in calls)


def test_lora_strength_range_is_checked_with_the_settings(in_repo_layout):
    from magicme.schema import check_settings

    with pytest.raises(ConfigError, match=r"^model.loras\[0\].strength: 2.5 not in \[0, 2\]$"):
        check_settings(load_sample_config(LCM, ["model.loras=[{path: x.safetensors, strength: 2.5}]"]))
