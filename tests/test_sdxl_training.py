"""SD-XL identity training (`train.py` with `model.family: sdxl`) on the tiny SD-XL bundle: the time ids that follow
the augmentation, the rows that learn in both encoders, the saved {clip_l, clip_g} file used by sample.py, the VAE's
dtype under fp16, resume, and the family errors raised before anything loads."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from omegaconf import OmegaConf
from safetensors.torch import load_file

import sample
import train
from magicme.embeddings import find_embeddings, read_class_word
from magicme.families import sdxl as sdxl_family
from magicme.schema import model_config
from magicme.training import trainer
from magicme.training.augment import Geometry, micro_conditioning
from magicme.training.config import (
    TrainConfig,
    load_train_config,
    validate_train_config,
)
from magicme.training.data import TrainImage, TrainingBatches
from magicme.training.sdxl import default_resolution, vae_dtype
from magicme.training.tokens import token_names

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "tiny" / "train_sdxl.yaml"
WIDTHS = (32, 48)  # the tiny SD-XL encoders (magicme/tiny/sdxl.py TEXT_WIDTHS)


# --- micro-conditioning: a known augmentation gives known time ids ---------------------------------------------------


@pytest.mark.parametrize("photo,geometry,size,expected", [
    # plain resize of a landscape photo: its centre square starts 80 px in, 80 · 64/480 = 10.67 → 11 after scaling
    ((480, 640), Geometry(False, 0.0, 64, (0, 0), ""), 64, (480, 640, 0, 11, 64, 64)),
    # a flip mirrors the centre crop: 641 − 480 − 80 = 81 px from the left of the mirrored photo
    ((480, 641), Geometry(False, 0.0, 480, (0, 0), ""), 480, (480, 641, 0, 80, 480, 480)),
    ((480, 641), Geometry(True, 0.0, 480, (0, 0), ""), 480, (480, 641, 0, 81, 480, 480)),
    # zoom in to 600 (×1.25): the centre crop's 80 → 100, plus the window's offset (30, 50)
    ((480, 640), Geometry(False, 0.0, 600, (30, 50), "close up "), 480, (480, 640, 30, 150, 480, 480)),
    # zoom out to 200 on a portrait photo: only the centre crop (80 · 200/480 = 33.3 → 33); the canvas cuts nothing
    ((640, 480), Geometry(False, 3.0, 200, (10, 20), "a far away "), 480, (640, 480, 33, 0, 480, 480)),
], ids=["resize", "no-flip", "flip", "zoom-in", "zoom-out"])
def test_time_ids_follow_the_augmentation(photo, geometry, size, expected):
    assert micro_conditioning(photo, geometry, size) == expected


@pytest.mark.parametrize("flip_p,column", [(0.0, 21), (1.0, 22)])
def test_batches_carry_each_photos_time_ids(flip_p, column):
    """A 300 × 501 photo, no zoom: its square starts at 100 (mirrored: 101) → ×64/300 → 21 (22)."""
    cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), {
        "name": "x", "images_dir": ".", "resolution": 64, "batch_size": 2, "use_orig_img_rate": 0.0,
        "augment": {"zoom": False, "flip_p": flip_p, "rotate_p": 0.0}})
    image = TrainImage(Path("p.png"), np.full((90, 90, 3), 0.5, np.float32), np.ones((90, 90), np.float32),
                       original_size=(300, 501))
    batch = TrainingBatches([image], cfg, "<x> man", "1/0", torch.device("cpu"))(0)
    assert batch.time_ids.tolist() == [[300, 501, 0, column, 64, 64]] * 2


def test_resolution_defaults_to_the_bases_native_size():
    assert default_resolution({"sample_size": 128}, {"block_out_channels": [128, 256, 512, 512]}) == 1024
    assert default_resolution({"sample_size": 8}, {"block_out_channels": [32] * 4}) == 64
    assert default_resolution({}, {}) == 1024  # a Hub id not downloaded: SD-XL's 1024


def test_an_unset_resolution_is_the_familys(tiny_bundle, tmp_path):
    """SD-XL: the base's native size (the tiny one's 64; SD-XL base's 1024); SD1.5: 512, as always."""
    (tmp_path / "photos").mkdir()
    from PIL import Image

    Image.new("RGB", (64, 64)).save(tmp_path / "photos" / "01.png")
    config = write_config(tmp_path, tiny_bundle, tmp_path / "photos", resolution=None)
    cfg = load_train_config(config)
    validate_train_config(cfg)
    assert cfg.resolution == 64
    cfg = load_train_config(config, ["model.family=sd15", f"model.base={tiny_bundle['sd15']}"])
    validate_train_config(cfg)
    assert cfg.resolution == 512


@pytest.mark.parametrize("dtype,force_upcast,expected", [
    (torch.float16, True, torch.float32), (torch.float16, False, torch.float16),
    (torch.bfloat16, True, torch.bfloat16), (torch.float32, True, torch.float32)])
def test_the_stock_vae_encodes_in_float32_under_fp16(dtype, force_upcast, expected):
    assert vae_dtype(dtype, force_upcast) == expected


# --- end to end on the tiny SD-XL bundle -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    from PIL import Image
    from skimage import data as skdata

    folder = tmp_path_factory.mktemp("xl-photos")
    face = skdata.astronaut()
    Image.fromarray(face).save(folder / "01.png")
    Image.fromarray(face[40:400, 60:500]).save(folder / "02.png")  # 360 × 440
    return folder


def write_config(folder: Path, tiny_bundle, photos: Path, **changes) -> Path:
    cfg = yaml.safe_load(CONFIG.read_text())
    cfg.update(images_dir=str(photos), output_dir=str(folder / "runs"), mask_cache_dir=str(folder / "cache"),
               copy_to_embeddings_dir=None)
    cfg["model"].update(base=str(tiny_bundle["sdxl"]), clipseg=str(tiny_bundle["clipseg"]))
    cfg["validation"]["every"] = 0
    cfg["validation"]["model"].update(base=str(tiny_bundle["sdxl"]), motion_module=str(tiny_bundle["motion_sdxl"]))
    for key, value in changes.items():
        node = cfg
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    path = folder / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


class Recorder:
    """What one run shows: the models it loaded, the base as loaded, every UNet and second-encoder call."""

    def __init__(self, monkeypatch):
        self.unet, self.encoder_2, self.models = [], [], []
        real_load, real_models = trainer.load_sdxl_base, trainer.SharedModels

        def load(*args, **kwargs):
            base = real_load(*args, **kwargs)
            self.original = [e.get_input_embeddings().weight.detach().clone()
                             for e in (base.text_encoder, base.text_encoder_2)]
            def unet_call(module, args, kwargs):
                self.unet.append({key: v.detach().clone() for key, v in kwargs["added_cond_kwargs"].items()})

            base.unet.register_forward_pre_hook(unet_call, with_kwargs=True)
            base.text_encoder_2.register_forward_pre_hook(lambda m, a: self.encoder_2.append(a[0].clone()))
            self.base = base
            return base

        def models(*args):
            self.models.append(real_models(*args))
            return self.models[-1]

        monkeypatch.setattr(trainer, "load_sdxl_base", load)
        monkeypatch.setattr(trainer, "SharedModels", models)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bundle, photos):
    """One 4-step run with a validation video at step 4, no zoom, no rotation, no flip: every time id is known."""
    folder = tmp_path_factory.mktemp("xl-run")
    with pytest.MonkeyPatch.context() as monkeypatch:
        seen = Recorder(monkeypatch)
        config = write_config(folder, tiny_bundle, photos, **{
            "validation.every": 4, "augment": {"zoom": False, "flip_p": 0.0, "rotate_p": 0.0}})
        assert train.main(["--config", str(config), "--quiet"]) == 0
    (run_dir,) = (folder / "runs").iterdir()
    return run_dir, seen


def test_training_writes_the_sdxl_embedding_and_a_validation_video(trained):
    run_dir, _ = trained
    for name in ("tinyxl.safetensors", "checkpoints/tinyxl-step-2.safetensors", "checkpoints/state-step-4.pt",
                 "config.yaml", "loss_curve.png"):
        assert (run_dir / name).is_file(), name
    assert not list(run_dir.glob("*.pt")) and not list(run_dir.glob("checkpoints/tinyxl-*.pt"))  # no SD1.5 layout
    saved = load_file(run_dir / "tinyxl.safetensors")
    assert {key: tuple(v.shape) for key, v in saved.items()} == {"clip_l": (4, 32), "clip_g": (4, 48)}
    assert read_class_word(run_dir / "tinyxl.safetensors") == "man"
    assert len(list((run_dir / "samples/step-4").glob("*.mp4"))) == 1
    assert OmegaConf.load(run_dir / "config.yaml").resolution == 64


def test_only_the_new_rows_learn_in_both_encoders(trained):
    run_dir, seen = trained
    saved = load_file(run_dir / "tinyxl.safetensors")
    encoders = (seen.base.text_encoder, seen.base.text_encoder_2)
    for encoder, original, vocabulary, key in zip(encoders, seen.original, seen.models[0].vocabularies,
                                                  ("clip_l", "clip_g")):
        weight = encoder.get_input_embeddings().weight.detach()
        assert weight.shape[0] == original.shape[0] + 4 and torch.equal(weight[:-4], original)
        assert torch.equal(weight[-4:], saved[key])
        # init: man — every row started as the mean embedding of the word's tokens in this encoder; Adam moved it
        # by ≈ lr a step, far more than weight decay alone would (≈ 1e-7)
        start = original[vocabulary.tokenizer("man", add_special_tokens=False).input_ids].mean(dim=0)
        assert (saved[key] - start).abs().max() > 5e-4, key


def test_the_unet_sees_the_augmentations_time_ids_and_the_second_encoders_pooled_text(trained):
    """Photo 01 is 512², photo 02 360 × 440 (its square 40 px in: 40 · 64/360 = 7.1 → 7)."""
    _, seen = trained
    assert len(seen.unet) == len(seen.encoder_2) == 4  # the training steps (validation loads its own models)
    for call in seen.unet[:4]:
        assert sorted(call["time_ids"].tolist()) == [[360, 440, 0, 7, 64, 64], [512, 512, 0, 0, 64, 64]]
        assert call["text_embeds"].shape == (2, WIDTHS[1]) and call["text_embeds"].abs().sum() > 0
    assert not torch.equal(seen.unet[0]["text_embeds"], seen.unet[3]["text_embeds"])  # the identity moved
    # the second encoder gets its own tokenizer's ids, the identity's tokens among them
    vocabulary = len(seen.models[0].vocabularies[1].tokenizer)
    assert all((ids >= vocabulary).any(dim=1).all() for ids in seen.encoder_2[:4])


def test_validation_used_the_trained_vectors_in_both_encoders(trained):
    run_dir, seen = trained
    saved = load_file(run_dir / "tinyxl.safetensors")
    (pipe,) = seen.models[0].validator.pipes.values()
    for tokenizer, encoder, key in ((pipe.t2v.tokenizer, pipe.t2v.text_encoder, "clip_l"),
                                    (pipe.t2v.tokenizer_2, pipe.t2v.text_encoder_2, "clip_g")):
        ids = tokenizer.convert_tokens_to_ids(token_names("tinyxl", 4))
        assert torch.equal(encoder.get_input_embeddings().weight[ids].detach(), saved[key])


def test_the_trained_identity_samples_with_both_encoders_vectors(trained, tiny_bundle, tmp_path):
    run_dir, _ = trained
    saved = load_file(run_dir / "tinyxl.safetensors")
    sample_cfg = yaml.safe_load((REPO / "configs" / "tiny" / "sample_sdxl.yaml").read_text())
    sample_cfg["model"].update(base=str(tiny_bundle["sdxl"]), motion_module=str(tiny_bundle["motion_sdxl"]),
                               embeddings_dir=str(run_dir))
    sample_cfg.update(prompts=["a photo of embedding:tinyxl man"], steps=1, frames=2, width=32, height=32,
                      stages=["t2v"],
                      output_dir=str(tmp_path / "out"))
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(sample_cfg))
    assert sample.main(["--config", str(tmp_path / "s.yaml"), "--quiet"]) == 0
    assert list((tmp_path / "out").rglob("*.mp4"))
    pipe = sdxl_family.load(model_config(sample_cfg["model"]), {"tinyxl": find_embeddings(run_dir)["tinyxl"]},
                            device="cpu")
    for tokenizer, encoder, key in ((pipe.t2v.tokenizer, pipe.t2v.text_encoder, "clip_l"),
                                    (pipe.t2v.tokenizer_2, pipe.t2v.text_encoder_2, "clip_g")):
        ids = tokenizer.convert_tokens_to_ids(token_names("tinyxl", 4))
        assert torch.equal(encoder.get_input_embeddings().weight[ids].detach(), saved[key])


def test_resume_continues_bit_identically(trained, tiny_bundle, photos, tmp_path):
    run_dir, _ = trained
    config = write_config(tmp_path, tiny_bundle, photos, augment={"zoom": False, "flip_p": 0.0, "rotate_p": 0.0})
    assert train.main(["--config", str(config), "--quiet", "max_steps=2"]) == 0
    assert train.main(["--config", str(config), "--quiet", "--resume", "auto"]) == 0
    (resumed,) = (tmp_path / "runs").iterdir()
    again, straight = load_file(resumed / "tinyxl.safetensors"), load_file(run_dir / "tinyxl.safetensors")
    assert all(torch.equal(again[key], straight[key]) for key in ("clip_l", "clip_g"))


# --- the VAE under fp16 ---------------------------------------------------------------------------------------------


def fp16_fix_vae(tiny_bundle, folder: Path) -> Path:
    """The tiny SD-XL VAE saved as an fp16-safe one (`force_upcast: false`, as sdxl-vae-fp16-fix's config says),
    with a scaling factor of its own so its use shows."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(tiny_bundle["sdxl"], subfolder="vae")
    vae.register_to_config(force_upcast=False, scaling_factor=0.5)
    vae.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("separate_vae", [False, True], ids=["stock-vae", "fp16-fix-vae"])
def test_fp16_training_encodes_with_the_stock_vae_in_float32(tiny_bundle, photos, tmp_path, separate_vae):
    """fp16 models on the CPU (a GPU run is the same code): the stock VAE (force_upcast) stays float32 and encodes
    float32 pixels, the UNet runs fp16; `model.vae` (the fp16-fix VAE) replaces it and encodes in fp16."""
    changes = {"model.vae": str(fp16_fix_vae(tiny_bundle, tmp_path / "vae"))} if separate_vae else {}
    cfg = load_train_config(write_config(tmp_path, tiny_bundle, photos, **changes))
    validate_train_config(cfg)
    models = trainer.SharedModels(cfg, torch.device("cpu"), torch.float16)
    expected = torch.float16 if separate_vae else torch.float32
    assert models.vae.dtype == expected and models.unet.dtype == torch.float16
    assert models.vae.config.scaling_factor == (0.5 if separate_vae else 0.13025)
    text_encoder, identity, encode, _ = trainer.attach_identity(models, cfg)
    inputs = []
    models.vae.encoder.register_forward_pre_hook(lambda m, a: inputs.append(a[0].dtype))
    loss_fn = trainer.DiffusionLoss(models.vae, models.unet, trainer.DDPMScheduler(**trainer.SDXL_TRAIN_BETAS), 0.1,
                                    torch.float16, models.vae_dtype, trainer.sdxl_unet_inputs)
    pixels = torch.rand(2, 3, 64, 64) * 2 - 1
    time_ids = torch.tensor([[64, 64, 0, 0, 64, 64]] * 2, dtype=torch.float32)
    loss = loss_fn(text_encoder, pixels, torch.ones(2, 64, 64), encode(["photo of a <tinyxl> man"] * 2),
                   torch.Generator().manual_seed(0), time_ids=time_ids)
    loss.backward()
    assert inputs == [expected] and torch.isfinite(loss)
    assert identity.vectors.grad is not None and identity.vectors.grad[:, WIDTHS[0]:].abs().sum() > 0


# --- errors before loading ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("change,message", [
    ({"model.base": "SD15"}, "model.base: {SD15}: an SD1.5 model, but model.family is sdxl"),
    ({"validation.every": 2, "validation.model.family": "sd15", "validation.model.base": "SD15",
      "validation.model.motion_module": "MM15", "validation.model.animatediff_numerics": "original"},
     "validation.model.family: sd15 but model.family is sdxl"),
    ({"validation.every": 2, "validation.model.motion_module": "MM15"},
     "validation.model.motion_module: {MM15}: an SD1.5 motion module, but model.family is sdxl"),
    ({"resolution": 32}, "resolution: 32 is below 48, 3/4 of this SD-XL base's native 64"),
    ({"model.family": "sd15", "model.base": "SD15", "model.vae": "SDXL/vae"}, "model.vae: only for model.family sdxl"),
    ({"model.family": "sd3"}, "model.family: 'sd3' is not sd15 or sdxl"),
], ids=["sd15-base", "validation-family", "sd15-motion-module", "resolution", "vae-for-sd15", "unknown-family"])
def test_family_mismatches_are_one_error_before_loading(tiny_bundle, photos, tmp_path, capsys, monkeypatch,
                                                         change, message):
    files = {"SD15": str(tiny_bundle["sd15"]), "MM15": str(tiny_bundle["motion_v2"]), "SDXL": str(tiny_bundle["sdxl"]),
             "MMXL": str(tiny_bundle["motion_sdxl"])}
    for key, value in change.items():
        for name, path in files.items():
            value = value.replace(name, path) if isinstance(value, str) else value
        change[key] = value
    monkeypatch.setattr(trainer, "load_sdxl_base", lambda *a, **k: pytest.fail("loaded before the check"))
    monkeypatch.setattr(trainer, "load_base", lambda *a, **k: pytest.fail("loaded before the check"))
    config = write_config(tmp_path, tiny_bundle, photos, **change)
    assert train.main(["--config", str(config), "--quiet"]) == 2
    assert message.format(**files) in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_an_sd15_state_does_not_resume_an_sdxl_identity(tiny_bundle, photos, tmp_path, capsys, monkeypatch):
    config = write_config(tmp_path, tiny_bundle, photos)
    run = tmp_path / "runs" / "tinyxl-20260101-000000"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("name: tinyxl\n")
    vectors = torch.nn.Parameter(torch.zeros(4, WIDTHS[0]))  # what SD1.5 training of the tiny bundle saves
    trainer.save_checkpoint(run / "checkpoints", "tinyxl", 42, 2, vectors, torch.optim.AdamW([vectors]), [1.0, 1.0])
    monkeypatch.setattr(trainer, "load_sdxl_base", lambda *a, **k: pytest.fail("loaded before the check"))
    assert train.main(["--config", str(config), "--quiet", "--resume", "latest"]) == 2
    assert "vectors of width 32 cannot continue on model.base, whose two text encoders are 80 wide" in \
        capsys.readouterr().err


def test_a_single_file_sdxl_base_trains_as_its_folder(tiny_bundle, photos, tmp_path, capsys, monkeypatch):
    """The tiny SD-XL folder as one `sd_xl_base` file with `base_config`: the run learns the folder run's vectors
    (to float rounding: the file's weights sit in other memory); an SD1.5 `base_config` is one error first."""
    from magicme.tiny.sdxl import save_tiny_sdxl_single_file

    single = save_tiny_sdxl_single_file(tiny_bundle["sdxl"], tmp_path / "xl.safetensors")
    vectors = []
    for i, base in enumerate([{}, {"model.base": str(single), "model.base_config": str(tiny_bundle["sdxl"])}]):
        folder = tmp_path / f"run{i}"
        folder.mkdir()
        assert train.main(["--config", str(write_config(folder, tiny_bundle, photos, **base)), "--quiet"]) == 0
        (run_dir,) = (folder / "runs").iterdir()
        vectors.append(load_file(run_dir / "tinyxl.safetensors"))
    for key in ("clip_l", "clip_g"):
        assert torch.allclose(vectors[0][key], vectors[1][key], atol=1e-5), key
    monkeypatch.setattr(trainer, "load_sdxl_base", lambda *a, **k: pytest.fail("loaded before the check"))
    config = write_config(tmp_path, tiny_bundle, photos, **{"model.base": str(single),
                                                            "model.base_config": str(tiny_bundle["sd15"])})
    assert train.main(["--config", str(config), "--quiet"]) == 2
    assert "an SD1.5 model folder, but xl.safetensors is an SDXL model" in capsys.readouterr().err
