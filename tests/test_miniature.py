"""The miniature world, reduced to CI size (docs/miniature.md): small models pretrained here on procedurally
rendered scenes must show that ID-token training learns an unseen object, that the masked loss keeps the photos'
background out of the tokens, and that γ makes frames more alike; and the models load through sample.py and
train.py with configs/miniature/*.yaml.

One pretraining and one set of experiments (module fixture) serve every test; each assertion is a margin over a
fixed seed set, chosen from the measured CI-size figures in docs/miniature.md. The pretraining takes minutes
(about 8 on 2 cores), so those tests are marked `miniature` and kept out of the default run:
`bash scripts/run_tests.sh -m miniature`.
"""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

import sample
import train
from magicme.miniature.ablations import CI_PLAN, NAME, run
from magicme.miniature.pretrain import CI, pretrain
from magicme.miniature.world import CI_WORLD, Scene, World, render, render_clip, shape_mask, trajectory

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "miniature"


def test_world_is_exact_and_seeded():
    world = World()
    scene = Scene("square", "red", "sand", (32.0, 32.0), 12.0)
    image, mask = render(world, scene, np.random.default_rng(0))
    again, _ = render(world, scene, np.random.default_rng(0))
    assert np.array_equal(image, again)
    assert abs(mask.sum() - (2 * 0.85 * 12) ** 2) < 2 * 2 * 0.85 * 12 + 4  # the square's area within its edge
    assert np.allclose(image[mask == 1].mean(0), np.array([220, 35, 35]) / 255, atol=0.1)
    for shape in world.shapes:
        assert shape_mask(shape, 64, (32.0, 32.0), 12.0).sum() > 100
    centres = trajectory(world, scene, 30, np.random.default_rng(1))
    assert all(scene.half <= c <= 64 - scene.half for centre in centres for c in centre)  # bounced, never left
    video, masks = render_clip(world, scene, 4, np.random.default_rng(2))
    assert video.shape == (4, 64, 64, 3) and not np.array_equal(masks[0], masks[-1])


def test_tokenizer_has_one_token_per_world_word(tmp_path):
    from magicme.tiny.sd import save_tiny_tokenizer

    world = World()
    tokenizer = save_tiny_tokenizer(tmp_path / "tokenizer", world.vocabulary())
    for word in world.vocabulary():
        assert tokenizer.tokenize(word) == [f"{word}</w>"]
    assert tokenizer.tokenize("zebra") == ["z", "e", "b", "r", "a</w>"]  # other words stay characters


@pytest.fixture(scope="module")
def ci_world(tmp_path_factory):
    """Pretrained once per session; MAGICME_MINIATURE_CI_CACHE names a folder that keeps the pretrained CI models
    between sessions (pretraining is reused when its world and budget match), e.g. to re-run mutations."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    cache = os.environ.get("MAGICME_MINIATURE_CI_CACHE")
    out = Path(cache) if cache else tmp_path_factory.mktemp("miniature")
    bundle = pretrain(out, CI_WORLD, CI)
    results = run(out, CI_WORLD, CI_PLAN, tmp_path_factory.mktemp("runs"))
    return out, bundle, results


@pytest.mark.miniature
def test_learned_tokens_fit_the_identity(ci_world):
    """The tokens learned the object: the training objective inside the object's mask, on the identity's photos,
    is clearly lower with them than with the class word alone or with random tokens (fixed draws)."""
    rows = ci_world[2].tables["denoising"]
    learned = rows["learned tokens (masked loss)"]["photos_object"]
    assert learned < 0.97 * rows["class word only"]["photos_object"], rows
    assert learned < 0.97 * rows["random tokens"]["photos_object"], rows


@pytest.mark.miniature
def test_masked_loss_leaves_the_background_out(ci_world):
    """With the whole-photo loss the tokens also fit the photos' background; with the masked loss they do not."""
    rows = ci_world[2].tables["denoising"]
    masked, whole = rows["learned tokens (masked loss)"], rows["learned tokens (whole-photo loss)"]
    assert whole["photos_background"] < 0.98 * masked["photos_background"], rows


@pytest.mark.miniature
def test_gamma_makes_frames_alike(ci_world):
    rows = ci_world[2].tables["gamma"]
    assert rows[0.5]["pixel_change"] < 0.8 * rows[0.0]["pixel_change"], rows


@pytest.mark.miniature
def test_models_load_through_sample_and_train(ci_world, tmp_path):
    out = ci_world[0]
    model = [f"model.base={out / 'sd15'}", f"model.motion_module={out / 'motion_module' / 'mm_miniature.ckpt'}",
             f"model.embeddings_dir={out / 'embeddings'}"]
    assert sample.main(["--config", str(CONFIGS / "sample.yaml"), "--quiet", *model, "steps=2", "frames=2",
                        "seeds=[1]", f"prompts=[a photo of a <{NAME}> triangle on snow]",
                        f"output_dir={tmp_path / 'samples'}"]) == 0
    assert len(list((tmp_path / "samples").rglob("*.mp4"))) == 1
    assert train.main(["--config", str(CONFIGS / "train.yaml"), "--quiet", "name=again", "max_steps=2",
                       "checkpoint_every=2", f"images_dir={out / 'identities' / NAME}", f"model.base={out / 'sd15'}",
                       f"model.clipseg={out / 'clipseg'}", f"mask_cache_dir={out / 'mask_cache'}",
                       f"output_dir={tmp_path / 'train'}", f"copy_to_embeddings_dir={tmp_path / 'emb'}"]) == 0
    assert (tmp_path / "emb" / "again.pt").is_file()
