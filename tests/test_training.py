"""train.py: augmentations, masked loss, frozen rows, checkpoints/resume, divergence, bad inputs, end to end."""

import random
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from omegaconf import OmegaConf
from PIL import Image
from skimage import data as skdata

import sample
import train
from magicme.embeddings import load_embedding_file
from magicme.training import trainer
from magicme.training.augment import CLOSE_PREFIXES, FAR_PREFIXES, Geometry, apply_geometry, draw_geometry
from magicme.errors import ConfigError
from magicme.training.config import TrainConfig, check_caption_template, load_train_config, validate_train_config
from magicme.training.data import (
    CANVAS_FILL, TrainImage, TrainingBatches, example_indices, load_training_images, read_photos, save_overlays,
)
from magicme.training.tokens import IdentityEmbedding
from magicme.training.loss import latent_mask, masked_mse


def test_caption_prefixes_and_their_frequencies():
    rng = random.Random(0)
    draws = [draw_geometry(rng, 512) for _ in range(6000)]
    prefixes = [g.prefix for g in draws]
    far = sum(p in FAR_PREFIXES for p in prefixes) / len(draws)
    close = sum(p in CLOSE_PREFIXES for p in prefixes) / len(draws)
    # exact probabilities of the original's draws: 2/3 · 137/343 far, 1/3 close (std of each estimate < 0.007)
    assert abs(far - 2 / 3 * 137 / 343) < 0.03 and abs(close - 1 / 3) < 0.03
    assert set(prefixes) == {"", *FAR_PREFIXES, *CLOSE_PREFIXES}
    assert all(g.scale % 2 == 0 for g in draws)
    assert all(170 <= g.scale < 0.6 * 512 for g in draws if g.prefix in FAR_PREFIXES)
    assert all(614 <= g.scale <= 716 for g in draws if g.prefix in CLOSE_PREFIXES)
    flips = sum(g.flip for g in draws) / len(draws)
    rotations = sum(g.angle != 0 for g in draws) / len(draws)
    assert abs(flips - 0.5) < 0.03 and abs(rotations - 0.3) < 0.03
    buggy = [draw_geometry(rng, 512, original_rotate_bug=True) for _ in range(3000)]
    assert abs(sum(g.angle != 0 for g in buggy) / len(buggy) - 0.7) < 0.04


@pytest.mark.parametrize("geometry", [
    Geometry(flip=True, angle=0.0, scale=64, offset=(0, 0), prefix=""),
    Geometry(flip=False, angle=17.0, scale=64, offset=(0, 0), prefix=""),
    Geometry(flip=True, angle=-9.0, scale=30, offset=(5, 20), prefix="a far away "),
    Geometry(flip=False, angle=4.0, scale=86, offset=(11, 3), prefix="close up "),
], ids=["flip", "rotate", "zoom-out", "zoom-in"])
def test_mask_follows_every_augmentation_of_its_image(geometry):
    image = torch.zeros(4, 64, 64)
    image[0, 10:40, 22:50] = 1.0  # the "person": a red block in RGB, and its mask in channel 3
    image[3, 10:40, 22:50] = 1.0
    out = apply_geometry(image, geometry, 64, torch.tensor(CANVAS_FILL))
    red = (out[0] > 0.5) & (out[1] < 0.25)
    mask = out[3] >= 0.5
    iou = (red & mask).sum() / (red | mask).sum()
    assert out.shape == (4, 64, 64) and iou > 0.95
    if geometry.scale < 64:  # the canvas around a shrunk photo is mid-grey, and no person is there
        assert torch.allclose(out[:3, 0, 0], torch.tensor(0.5)) and out[3, 0, 0] == 0


def test_batches_are_a_function_of_the_step(tmp_path):
    cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), {"name": "x", "images_dir": ".", "resolution": 64,
                                                             "batch_size": 3, "use_orig_img_rate": 0.5})
    images = [TrainImage(Path(f"{i}.png"), np.full((90, 90, 3), i / 4, np.float32), np.ones((90, 90), np.float32))
              for i in range(4)]
    batches = TrainingBatches(images, cfg, "<x> man", "7/0", torch.device("cpu"))
    first, again, other = batches(5), batches(5), batches(6)
    assert torch.equal(first.pixels, again.pixels) and first.captions == again.captions
    assert not torch.equal(first.pixels, other.pixels)
    assert first.pixels.shape == (3, 3, 64, 64) and first.masks.shape == (3, 64, 64)
    assert first.pixels.min() >= -1 and first.pixels.max() <= 1
    assert all(c.endswith("photo of a <x> man") for c in first.captions)  # {id} filled with tokens + class word
    # every photo appears once per epoch of the shuffled order
    seen = [i for step in range(4) for i in example_indices(step, 3, 4, "7/0")]
    assert all(sorted(seen[e * 4:(e + 1) * 4]) == [0, 1, 2, 3] for e in range(3))


def test_every_training_example_keeps_its_mask_on_the_person():
    cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), {"name": "x", "images_dir": ".", "resolution": 128,
                                                             "batch_size": 4, "use_orig_img_rate": 0.0})
    side = 180
    photo = np.zeros((side, side, 3), np.float32)
    mask = np.zeros((side, side), np.float32)
    photo[20:110, 30:90, 0] = mask[20:110, 30:90] = 1.0  # a red "person" on black, off-centre
    batches = TrainingBatches([TrainImage(Path("p.png"), photo, mask)], cfg, "<x> man", "3/0", torch.device("cpu"))
    prefixes = set()
    for step in range(15):
        batch = batches(step)
        red = (batch.pixels[:, 0] > 0) & (batch.pixels[:, 1] < -0.5)
        for r, m, caption in zip(red, batch.masks.bool(), batch.captions):
            assert (r & m).sum() / (r | m).sum() > 0.85, caption
            prefixes.add(caption.split("photo")[0])
    assert len(prefixes) >= 3  # plain, zoomed-out and zoomed-in examples were all checked


def test_masked_loss_is_the_formula_and_ignores_pixels_outside_the_mask():
    torch.manual_seed(0)
    pred = torch.randn(2, 4, 8, 8, requires_grad=True)
    target = torch.randn(2, 4, 8, 8)
    mask = torch.zeros(2, 1, 8, 8)
    mask[0, :, 2:5, 1:7] = 1
    mask[1, :, :, :4] = 1
    loss = masked_mse(pred, target, mask)
    expected = sum(((pred[i] - target[i]) ** 2 * mask[i]).sum() / mask[i].sum() for i in range(2)) / 2
    assert torch.allclose(loss, expected)
    loss.backward()
    assert torch.all(pred.grad[mask.expand_as(pred) == 0] == 0)
    assert torch.all(pred.grad[mask.expand_as(pred) == 1] != 0)
    pixel_mask = torch.zeros(1, 64, 64)
    pixel_mask[0, :32] = 1
    assert torch.equal(latent_mask(pixel_mask, (8, 8))[0, 0, :4], torch.ones(4, 8))
    assert latent_mask(pixel_mask, (8, 8))[0, 0, 4:].sum() == 0


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    face = skdata.astronaut()
    Image.fromarray(face).save(folder / "01.png")
    Image.fromarray(face[:, ::-1]).save(folder / "02.jpg")
    Image.fromarray(face[40:400, 60:500]).save(folder / "03.webp")
    return folder


def write_train_config(tmp_path, tiny_bundle, photos, **changes) -> Path:
    cfg = yaml.safe_load(Path("configs/tiny/train.yaml").read_text())
    cfg.update(images_dir=str(photos), output_dir=str(tmp_path / "runs"), mask_cache_dir=str(tmp_path / "cache"),
               copy_to_embeddings_dir=None)  # never into the repository's models/ (tests that copy set a folder)
    cfg["model"] = {"base": str(tiny_bundle["sd15"]), "clipseg": str(tiny_bundle["clipseg"])}
    cfg["validation"]["every"] = 0
    cfg["validation"]["model"].update(base=str(tiny_bundle["sd15"]), motion_module=str(tiny_bundle["motion_v2"]))
    for key, value in changes.items():
        node = cfg
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def error_line(err: str) -> str:
    """The one `error: ...` line a CLI prints for a ConfigError (a model-loading bar may come before it)."""
    assert "Traceback" not in err
    *_, last = err.rstrip("\n").split("\n")
    assert last.startswith("error: ") and err.endswith(last + "\n")
    return last


def final_vectors(tmp_path) -> torch.Tensor:
    (pt,) = (tmp_path / "runs").glob("*/tinyperson2.pt")
    return load_embedding_file(pt)


def test_train_py_end_to_end_with_validation_video_and_sampling(tmp_path, tiny_bundle, photos, monkeypatch):
    seen = {}
    real_load_base = trainer.load_base
    monkeypatch.setattr(trainer, "load_base", lambda *a: seen.setdefault("base", real_load_base(*a)))
    original = real_load_base(str(tiny_bundle["sd15"]), None, torch.float32).text_encoder
    config = write_train_config(tmp_path, tiny_bundle, photos, **{"validation.every": 4})
    assert train.main(["--config", str(config), "--quiet"]) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    for name in ("tinyperson2.pt", "config.yaml", "train.log", "loss_curve.png", "masks/01.png",
                 "checkpoints/tinyperson2-step-2.pt", "checkpoints/tinyperson2-step-4.safetensors"):
        assert (run_dir / name).is_file(), name
    assert len(list((run_dir / "samples/step-4").glob("*.mp4"))) == 1
    # every row but the 4 new ones is bit-identical to the base text encoder
    trained = seen["base"].text_encoder.get_input_embeddings().weight
    before = original.get_input_embeddings().weight
    assert trained.shape[0] == before.shape[0] + 4 and torch.equal(trained[:-4], before)
    vectors = load_embedding_file(run_dir / "tinyperson2.pt")
    assert torch.equal(trained[-4:].detach(), vectors) and vectors.shape == (4, 32)
    # the .pt is usable by sample.py as embedding:<name>
    sample_cfg = tmp_path / "s.yaml"
    sample_cfg.write_text(yaml.safe_dump({
        "model": {"base": str(tiny_bundle["sd15"]), "motion_module": str(tiny_bundle["motion_v2"]),
                  "embeddings_dir": str(run_dir)},
        "prompts": ["a photo of embedding:tinyperson2 man"], "steps": 1, "frames": 2, "width": 32, "height": 32,
        "output_dir": str(tmp_path / "samples")}))
    assert sample.main(["--config", str(sample_cfg), "--quiet"]) == 0


def test_resume_is_bit_identical(tmp_path, tiny_bundle, photos):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    straight.mkdir(), resumed.mkdir()
    assert train.main(["--config", str(write_train_config(straight, tiny_bundle, photos)), "--quiet"]) == 0
    config = write_train_config(resumed, tiny_bundle, photos)
    assert train.main(["--config", str(config), "--quiet", "max_steps=2"]) == 0
    assert train.main(["--config", str(config), "--quiet", "--resume", "latest"]) == 0
    assert torch.equal(final_vectors(straight), final_vectors(resumed))


def test_resume_refuses_a_mismatched_or_missing_checkpoint(tmp_path, tiny_bundle, photos, capsys):
    config = write_train_config(tmp_path, tiny_bundle, photos, max_steps=2)
    assert train.main(["--config", str(config), "--quiet"]) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert train.main(["--config", str(config), "--quiet", "--resume", str(run_dir), "num_tokens=2"]) == 2
    assert "cannot continue 'tinyperson2' with num_tokens=2" in capsys.readouterr().err
    assert train.main(["--config", str(config), "--quiet", "--resume", str(tmp_path / "nope")]) == 2
    assert "not found" in capsys.readouterr().err


def test_gradient_checkpointing_trains_the_same_vectors(tmp_path, tiny_bundle, photos):
    plain, checkpointed = tmp_path / "plain", tmp_path / "checkpointed"
    plain.mkdir(), checkpointed.mkdir()
    for folder, flag in ((plain, "false"), (checkpointed, "true")):
        config = write_train_config(folder, tiny_bundle, photos, max_steps=2, checkpoint_every=1)
        assert train.main(["--config", str(config), "--quiet", f"gradient_checkpointing={flag}"]) == 0
    after_one = load_embedding_file(next((checkpointed / "runs").glob("*/checkpoints/tinyperson2-step-1.pt")))
    assert not torch.equal(after_one, final_vectors(checkpointed))  # gradients reach the vectors
    assert torch.allclose(final_vectors(plain), final_vectors(checkpointed), atol=1e-6)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, tiny_bundle, photos, monkeypatch, capsys):
    real = trainer.masked_mse
    calls = []

    def failing(*args):
        calls.append(1)
        loss = real(*args)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(trainer, "masked_mse", failing)
    assert train.main(["--config", str(write_train_config(tmp_path, tiny_bundle, photos)), "--quiet"]) == 3
    assert "loss became nan at step 3" in capsys.readouterr().err
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert (run_dir / "checkpoints/tinyperson2-step-2.pt").is_file()
    assert not list(run_dir.glob("checkpoints/*step-3*")) and not (run_dir / "tinyperson2.pt").exists()


def bomb_photo(folder: Path) -> Path:
    """A 9000 x 9000 PNG of a few kilobytes: more pixels than the photo limit, decoded it would take 243 MB."""
    folder.mkdir()
    Image.new("1", (9000, 9000)).save(folder / "01.png")
    return folder


@pytest.mark.parametrize("change,message", [
    ({"images_dir": "does/not/exist"}, "images_dir: does/not/exist is not a folder"),
    ({"images_dir": "EMPTY"}, "images_dir: no images"),
    ({"images_dir": "BROKEN"}, "broken/01.png: cannot read this training photo"),
    ({"images_dir": "BOMB"}, "bomb/01.png: 9000x9000 pixels is more than the 64 MP limit for a training photo"),
    ({"caption_template": "photo of a {}"}, "caption_template: 'photo of a {}' uses {}; write {id}"),
    ({"caption_template": "photo of a man"}, "caption_template: 'photo of a man' needs {id}"),
    ({"output_dir": "AFILE/runs"}, "output_dir: AFILE is a file, not a folder"),
    ({"mask_cache_dir": "AFILE"}, "mask_cache_dir: AFILE is a file, not a folder"),
    ({"copy_to_embeddings_dir": "AFILE/x"}, "copy_to_embeddings_dir: AFILE is a file, not a folder"),
    ({"mask_threshold": 1.0}, "mask_prompt: CLIPSeg found no 'person' in any training image"),  # after CLIPSeg
    ({"class_word": " "}, "class_word: required"),
    ({"init": "rare"}, "init: the original's rare-token ids need the CLIP vocabulary"),
    ({"lr": 0}, "lr: 0.0 must be > 0"),
    ({"name": "Ann"}, "name: 'Ann' must be lower-case"),
    ({"validation.every": 2, "validation.prompts": ["no identity here"]}, "validation.prompts: 'no identity here'"),
    ({"learning_rate": 0.1}, "learning_rate: Key 'learning_rate' not in 'TrainConfig'"),
    ({"max_steps": "many"}, "max_steps: Value 'many' of type 'str' could not be converted to Integer"),
    ({"mixed_precision": "fp8"}, "mixed_precision: 'fp8' not one of no, fp16, bf16"),
])
def test_bad_inputs(tmp_path, tiny_bundle, photos, capsys, monkeypatch, change, message):
    """One line naming the key or file, exit 2, and no run folder; all but the mask check before training starts."""
    if "mask_threshold" not in change:
        monkeypatch.setattr(trainer, "Accelerator", lambda *a, **k: pytest.fail("found only once training started"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "01.png").write_bytes(b"not an image")
    (tmp_path / "afile").write_text("a file")
    folders = {"EMPTY": tmp_path / "empty", "BROKEN": tmp_path / "broken", "BOMB": tmp_path / "bomb"}
    if change.get("images_dir") == "BOMB":
        bomb_photo(tmp_path / "bomb")
    change = {key: str(folders.get(value, value)).replace("AFILE", str(tmp_path / "afile"))
              if isinstance(value, str) else value for key, value in change.items()}
    message = message.replace("AFILE", str(tmp_path / "afile"))
    config = write_train_config(tmp_path, tiny_bundle, photos, **change)
    assert train.main(["--config", str(config), "--quiet"]) == 2
    assert message in error_line(capsys.readouterr().err)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "x").exists()


@pytest.mark.parametrize("text,overrides,message", [
    ("name: [unclosed\n", [], "not valid YAML"),
    ("- name: a\n- name: b\n", [], "the top level is a list, not a mapping"),
    (None, ["validation.seeds=[1,2"], "validation.seeds: cannot parse the override"),
    (None, ["name=${nope}"], "name: Interpolation key 'nope' not found"),
    (None, ["lr"], "lr: an override must be key=value"),
])
def test_malformed_configs_are_one_line_errors(tmp_path, tiny_bundle, photos, capsys, text, overrides, message):
    config = write_train_config(tmp_path, tiny_bundle, photos)
    if text is not None:
        config.write_text(text)
    assert train.main(["--config", str(config), "--quiet", *overrides]) == 2
    assert message in error_line(capsys.readouterr().err)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("path", sorted(Path("configs/train").glob("*.yaml")) + [Path("configs/tiny/train.yaml")],
                         ids=str)
def test_shipped_configs_use_the_id_placeholder(path):
    cfg = load_train_config(path)
    check_caption_template(cfg.caption_template)
    assert all("{id}" in prompt for prompt in cfg.validation.prompts)


# The original's validation_data (Magic-Me configs/ceo.yaml), copied by hand: prompts with its 4 tokens and class word.
CEO_PROMPTS = [
    "photo of a <new1> <new2> <new3> <new4> man in casual clothes, natural skin, in front of the Pyramid, Egypt",
    "Photo of a <new1> <new2> <new3> <new4> man on a balcony with a cityscape at night, with soft lights twinkling in "
    "the distance",
]
CEO_NEGATIVE = ("semi-realistic, cgi, 3d, render, sketch, cartoon, drawing, anime, text, close up, cropped, out of "
                "frame, worst quality, low quality, jpeg artifacts, ugly, duplicate, morbid, mutilated, extra fingers, "
                "mutated hands, poorly drawn hands, poorly drawn face, mutation, deformed, blurry, dehydrated, bad "
                "anatomy, bad proportions, extra limbs, cloned face, disfigured, gross proportions, malformed limbs, "
                "missing arms, missing legs, extra arms, extra legs, fused fingers, too many fingers, long neck")


@pytest.mark.parametrize("source", ["defaults", "configs/train/example.yaml"])
def test_validation_is_the_originals(source):
    """γ 0.05 (the original validation pipeline's cov_alpha), its two prompts, its long negative prompt, 25 steps
    at CFG 7.5, 16 frames of 512²."""
    v = TrainConfig().validation if source == "defaults" else load_train_config(Path(source)).validation
    assert [p.replace("{id}", "<new1> <new2> <new3> <new4> man") for p in v.prompts] == CEO_PROMPTS
    assert v.negative_prompt == CEO_NEGATIVE and v.gamma == 0.05
    assert (v.steps, v.guidance_scale, v.frames, v.width, v.height) == (25, 7.5, 16, 512, 512)


def test_photos_are_decoded_when_the_config_is_checked(tmp_path, tiny_bundle, photos):
    cfg = load_train_config(write_train_config(tmp_path, tiny_bundle, photos))
    decoded = validate_train_config(cfg)
    assert [p.path.name for p in decoded] == ["01.png", "02.jpg", "03.webp"]
    assert decoded[0].crop.shape == (512, 512, 3) and decoded[2].crop.shape == (360, 360, 3)
    cfg.images_dir = str(bomb_photo(tmp_path / "bomb"))
    with pytest.raises(ConfigError, match="01.png: 9000x9000 pixels is more than the 64 MP limit"):
        validate_train_config(cfg)


def test_photos_are_decoded_once_as_read_image_decodes_them(photos, monkeypatch):
    from magicme.images import read_image
    from magicme.training import data

    calls = []
    monkeypatch.setattr(data, "read_image", lambda path, what: calls.append(path) or read_image(path, what))
    decoded = read_photos(sorted(photos.iterdir()))
    assert len(calls) == 3
    full = read_image(photos / "03.webp")  # 360 x 440: the centre 360 x 360 square
    assert decoded[2].crop.dtype == np.uint8 and np.array_equal(decoded[2].pixels(), full[:, 40:400])


def test_masks_are_cached_and_a_random_seed_is_recorded(tmp_path, tiny_bundle, photos, monkeypatch):
    config = write_train_config(tmp_path, tiny_bundle, photos, max_steps=1, seed=-1)
    assert train.main(["--config", str(config), "--quiet"]) == 0
    assert len(list((tmp_path / "cache").glob("*.png"))) == 3
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert 0 <= yaml.safe_load((run_dir / "config.yaml").read_text())["seed"] < 2**32
    monkeypatch.setattr(trainer, "ClipSegSegmenter", lambda *a, **k: pytest.fail("CLIPSeg loaded although cached"))
    assert train.main(["--config", str(config), "--quiet"]) == 0


def test_an_image_whose_mask_is_empty_is_skipped_with_a_warning(tmp_path, photos, caplog):
    class Segmenter:  # finds nobody in the first photo, everybody in the others
        calls = 0

        def probabilities(self, images, prompt):
            Segmenter.calls += 1
            return np.full(images.shape[:3], 0.0 if Segmenter.calls == 1 else 1.0, dtype=np.float32)

    paths = sorted(photos.iterdir())
    with caplog.at_level("WARNING", logger="magicme.train"):
        kept = load_training_images(read_photos(paths), Segmenter, "model-id", "person", 0.5, tmp_path / "cache", 32)
    save_overlays(tmp_path / "masks", kept)
    assert [k.path for k in kept] == paths[1:] and all(k.mask.shape == (32, 32) for k in kept)
    assert "01.png" in caplog.text and "empty" in caplog.text
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == ["02.png", "03.png"]


def test_identity_embedding_replaces_only_the_id_tokens():
    base = torch.nn.Embedding(10, 3)
    identity = IdentityEmbedding(base, [8, 9], torch.ones(2, 3))
    ids = torch.tensor([[1, 8, 2, 9]])
    out = identity(ids)
    assert torch.equal(out[0, [0, 2]], base(ids)[0, [0, 2]]) and torch.equal(out[0, [1, 3]], torch.ones(2, 3))
    out.sum().backward()
    assert base.weight.grad is None and torch.equal(identity.vectors.grad, torch.ones(2, 3))


def test_gradient_clipping_acts_on_the_id_vectors(tmp_path, tiny_bundle, photos, monkeypatch):
    clipped = []
    real = trainer.Accelerator.clip_grad_norm_

    def spy(self, parameters, max_norm, *args, **kwargs):
        parameters = list(parameters)
        clipped.append([(tuple(p.shape), p.is_leaf, p.grad is not None) for p in parameters])
        return real(self, parameters, max_norm, *args, **kwargs)

    monkeypatch.setattr(trainer.Accelerator, "clip_grad_norm_", spy)
    config = write_train_config(tmp_path, tiny_bundle, photos, max_steps=1, max_grad_norm=1e-6)
    assert train.main(["--config", str(config), "--quiet"]) == 0
    assert clipped == [[((4, 32), True, True)]]


def test_nice_ticks_are_round_and_cover_the_range():
    from magicme.training.trainer import nice_ticks

    assert nice_ticks(1, 400) == [100, 200, 300, 400]
    assert nice_ticks(1, 4) == [1, 2, 3, 4]
    assert nice_ticks(0.0312, 0.0871) == [0.04, 0.06, 0.08]
    assert nice_ticks(0.5, 0.5) == [0.5]


def test_loss_curve_has_axes_and_ticks(tmp_path):
    """The PNG has a y axis and an x axis (dark lines along the plot area's left and bottom edges) with tick marks
    at the round step values."""
    from PIL import Image

    from magicme.training.trainer import save_loss_curve

    save_loss_curve(tmp_path / "c.png", [1.0 - 0.002 * i for i in range(400)])
    pixels = np.asarray(Image.open(tmp_path / "c.png").convert("L"))
    left, bottom, right, top = 64, 320 - 40, 640 - 16, 24
    assert (pixels[top:bottom, left] < 80).all() and (pixels[bottom, left:right] < 80).all()
    tick_x = [round(left + (step - 1) / 399 * (right - left)) for step in (100, 200, 300, 400)]
    assert all((pixels[bottom + 1:bottom + 5, x] < 80).all() for x in tick_x)
    assert (pixels[bottom + 1:bottom + 5, left + 30] > 200).all()  # no tick between them
