"""Training speed settings, end to end through train.py on the tiny bundle: a compiled UNet trains the same vectors,
TF32 follows its key, and losses read from the device in batches still stop a diverged run before it saves."""

import json

import torch

import train
from magicme.checkpoint_io import load_checkpoint
from tests.test_training import final_vectors, photos, write_train_config  # noqa: F401 (photos is a fixture)


def run(tmp_path, tiny_bundle, photos, name: str, *args: str, **changes) -> int:  # noqa: F811
    folder = tmp_path / name
    folder.mkdir()
    config = write_train_config(folder, tiny_bundle, photos, **changes)
    return train.main(["--config", str(config), "--quiet", *args])


def test_compiled_unet_trains_the_same_vectors(tmp_path, tiny_bundle, photos):  # noqa: F811
    """--compile reaches the UNet (dynamo captures its blocks, forward and backward); the eager backend runs the
    captured graphs as they are, so the vectors must be exactly those of the plain run."""
    assert run(tmp_path, tiny_bundle, photos, "plain", max_steps=2) == 0
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    assert run(tmp_path, tiny_bundle, photos, "compiled", "--compile", max_steps=2, compile_backend="eager") == 0
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 5  # the tiny UNet's 2 down, 1 mid, 2 up blocks
    assert torch.equal(final_vectors(tmp_path / "compiled"), final_vectors(tmp_path / "plain"))


def test_tf32_follows_its_key(tmp_path, tiny_bundle, photos):  # noqa: F811
    for enabled in (False, True):
        assert run(tmp_path, tiny_bundle, photos, f"tf32-{enabled}", max_steps=1, tf32=enabled) == 0
        assert torch.backends.cuda.matmul.allow_tf32 is enabled and torch.backends.cudnn.allow_tf32 is enabled


def test_losses_are_read_in_batches_and_all_kept(tmp_path, tiny_bundle, photos):  # noqa: F811
    """12 steps, a checkpoint every 5: reads at 5, 10 (also the every-10 read) and 12; every step's loss is kept,
    in order, in the checkpoint state and the summary."""
    assert run(tmp_path, tiny_bundle, photos, "losses", max_steps=12, checkpoint_every=5) == 0
    (run_dir,) = (tmp_path / "losses" / "runs").iterdir()
    at_5 = load_checkpoint(run_dir / "checkpoints" / "state-step-5.pt")["losses"]
    at_12 = load_checkpoint(run_dir / "checkpoints" / "state-step-12.pt")["losses"]
    assert len(at_5) == 5 and len(at_12) == 12 and at_12[:5] == at_5
    assert json.loads((run_dir / "summary.json").read_text())["final_loss"] == at_12[-1]


def test_a_diverged_run_saves_nothing_of_the_bad_steps(tmp_path, tiny_bundle, photos, capsys):  # noqa: F811
    """A noise offset at the edge of float32 (an infinite one is a config error) makes the first loss NaN; the read at
    the first checkpoint (step 3) finds it, names step 1, and no checkpoint of those steps is written."""
    assert run(tmp_path, tiny_bundle, photos, "nan", max_steps=6, checkpoint_every=3, noise_offset=1e38) == 3
    assert "loss became nan at step 1" in capsys.readouterr().err
    (run_dir,) = (tmp_path / "nan" / "runs").iterdir()
    assert not list((run_dir / "checkpoints").glob("*step-*"))
