"""train.py --resume: only genuine run folders, safe and checked state files, the newest good state by step, the
fp16 loss scale, one trainer per run folder, and no leftovers of an interrupted run."""

import os
import shutil
from pathlib import Path

import pytest
import torch

import train
from magicme.checkpoint_io import load_checkpoint, save_torch
from magicme.embeddings import load_embedding_file
from magicme.rundir import RunLock
from magicme.training import trainer
from magicme.video_io import TEMP_MARK
from tests.test_training import error_line, photos, write_train_config  # noqa: F401 (a fixture)


def files_of(folder: Path) -> dict[Path, tuple[int, int]]:
    """Every file under `folder` with its size and modification time: what "nothing was written" compares."""
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_bundle, photos) -> Path:  # noqa: F811 (the imported fixture)
    """A finished 4-step run with states at steps 2 and 4, trained once for the module."""
    folder = tmp_path_factory.mktemp("finished")
    config = write_train_config(folder, tiny_bundle, photos, max_steps=4, checkpoint_every=2)
    assert train.main(["--config", str(config), "--quiet"]) == 0
    (run_dir,) = (folder / "runs").iterdir()
    return run_dir


@pytest.fixture
def run(tmp_path, tiny_bundle, photos, finished_run) -> tuple[Path, Path]:  # noqa: F811
    """A copy of the finished run under this test's output_dir; returns (config, run folder)."""
    config = write_train_config(tmp_path, tiny_bundle, photos, max_steps=4, checkpoint_every=2)
    run_dir = shutil.copytree(finished_run, tmp_path / "runs" / finished_run.name)
    return config, run_dir


def test_resume_continues_only_a_genuine_run_folder(tmp_path, run, capsys):
    config, run_dir = run
    state = run_dir / "checkpoints" / "state-step-2.pt"
    some = tmp_path / "some"
    (some / "dir").mkdir(parents=True)
    (some / "config.yaml").write_text("mine: true\n")
    shutil.copy(state, some / "dir" / "state.pt")
    (tmp_path / "loose" / "checkpoints").mkdir(parents=True)  # the right file name, but no run around it
    shutil.copy(state, tmp_path / "loose" / "checkpoints" / "state-step-2.pt")
    before = files_of(tmp_path)
    for resume in (some / "dir" / "state.pt", some, tmp_path / "loose" / "checkpoints" / "state-step-2.pt",
                   tmp_path / "loose"):
        assert train.main(["--config", str(config), "--quiet", "--resume", str(resume)]) == 2
        assert f"--resume {resume}: not a run folder of train.py" in error_line(capsys.readouterr().err)
    assert files_of(tmp_path) == before and (some / "config.yaml").read_text() == "mine: true\n"


def corrupt(state_path: Path, change: str) -> None:
    """Damage a saved training state in one way."""
    if change == "garbage":
        state_path.write_bytes(b"PK\x03\x04 not really a zip")
        return
    if change == "code":  # a pickle that would run code: the safe reader refuses it
        torch.save({"name": Path("x")}, state_path)
        return
    state = load_checkpoint(state_path)
    if change == "list":
        state = [state]
    elif change == "no optimizer":
        del state["optimizer"]
    elif change == "vectors 1-D":
        state["vectors"] = state["vectors"][0]
    elif change == "step":
        state["step"] = 3
    elif change == "losses":
        state["losses"] = state["losses"][:1]
    elif change == "moments":
        state["optimizer"]["state"][0]["exp_avg"] = torch.zeros(3, 32)
    elif change == "two groups":
        state["optimizer"]["param_groups"].append(dict(state["optimizer"]["param_groups"][0], params=[1]))
    elif change == "rng":
        state["rng"]["torch"] = torch.zeros(7, dtype=torch.uint8)
    elif change == "numpy rng":
        state["rng"]["numpy"][1] = [1, 2, 3]
    elif change == "scaler":
        state["scaler"] = {"scale": "big"}
    elif change == "width":
        state["vectors"] = torch.zeros(4, 16)
        for key in ("exp_avg", "exp_avg_sq"):
            state["optimizer"]["state"][0][key] = torch.zeros(4, 16)
    save_torch(state, state_path)


@pytest.mark.parametrize("change,message", [
    ("garbage", "not a readable training state"),
    ("code", "not a readable training state: it holds objects other than tensors"),
    ("list", "not a usable training state: it holds a list"),
    ("no optimizer", "it lacks optimizer"),
    ("vectors 1-D", "vectors is not a (tokens, width) float tensor"),
    ("step", "step must be a string, an integer and 2"),
    ("losses", "losses is not a list of 2 numbers"),
    ("moments", "optimizer does not load (ValueError: exp_avg has shape (3, 32), not (4, 32))"),
    ("two groups", "optimizer does not load (ValueError"),
    ("rng", "rng does not load"),
    ("numpy rng", "rng does not load"),
    ("scaler", "scaler is not a loss-scaler state"),
    ("width", "vectors of width 16 cannot continue on model.base, whose text encoder is 32 wide"),
])
def test_a_bad_state_file_is_one_config_error_and_nothing_is_written(run, capsys, change, message):
    config, run_dir = run
    state = run_dir / "checkpoints" / "state-step-2.pt"
    corrupt(state, change)
    before = files_of(run_dir)
    assert train.main(["--config", str(config), "--quiet", "--resume", str(state)]) == 2
    line = error_line(capsys.readouterr().err)
    assert message in line and "state-step-2.pt" in line
    assert files_of(run_dir) == before


def test_resume_latest_picks_the_highest_step_and_falls_back_from_a_broken_one(tmp_path, run, caplog):
    caplog.set_level("INFO", logger="magicme.train")  # as train.py's command line logs (pytest's root is WARNING)
    config, run_dir = run
    straight = load_embedding_file(run_dir / "tinyperson2.pt")
    other = tmp_path / "runs" / "tinyperson2-b-20991231-235959"  # another identity, started later
    shutil.copytree(run_dir, other)
    newer = run_dir.stat().st_mtime + 1000
    os.utime(run_dir / "checkpoints" / "state-step-2.pt", (newer, newer))  # the older step is the newer file
    assert train.main(["--config", str(config), "--quiet", "--resume", "latest"]) == 0
    assert f"resuming {run_dir} at step 4 from state-step-4.pt" in (run_dir / "train.log").read_text()

    (run_dir / "checkpoints" / "state-step-4.pt").write_bytes(b"cut short by a full disk")
    assert train.main(["--config", str(config), "--quiet", "--resume", "latest"]) == 0
    log = (run_dir / "train.log").read_text()
    assert "WARNING" in log and "state-step-4.pt: not a readable training state" in log
    assert f"resuming {run_dir} at step 2 from state-step-2.pt" in log
    assert torch.equal(load_embedding_file(run_dir / "tinyperson2.pt"), straight)  # steps 3-4 again, bit-identical
    assert load_checkpoint(run_dir / "checkpoints" / "state-step-4.pt")["step"] == 4  # rewritten, good again


class ScaledAccelerator(trainer.Accelerator):
    """accelerate with the GradScaler it makes for fp16 on a GPU: this machine has none, so the CPU one stands in
    (the loop scales, unscales, steps and updates it exactly as it would accelerate's CUDA one)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=3)


def test_the_fp16_loss_scale_is_saved_and_restored(tmp_path, tiny_bundle, photos, monkeypatch):  # noqa: F811
    monkeypatch.setattr(trainer, "Accelerator", ScaledAccelerator)
    config = write_train_config(tmp_path, tiny_bundle, photos, max_steps=2, checkpoint_every=2)
    assert train.main(["--config", str(config), "--quiet"]) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    saved = load_checkpoint(run_dir / "checkpoints" / "state-step-2.pt")["scaler"]
    assert (saved["scale"], saved["_growth_tracker"]) == (2.0**10, 2)
    assert train.main(["--config", str(config), "--quiet", "max_steps=4", "--resume", str(run_dir)]) == 0
    # restored: step 3 is the third without overflow, so the scale doubles; step 4 starts counting again
    final = load_checkpoint(run_dir / "checkpoints" / "state-step-4.pt")["scaler"]
    assert (final["scale"], final["_growth_tracker"]) == (2.0**11, 1)


def test_one_trainer_per_run_folder(tmp_path, run, capsys, monkeypatch):
    config, run_dir = run
    assert not (run_dir / ".lock").exists()  # released when the run ended
    before = files_of(run_dir)
    with RunLock(run_dir):  # another trainer (alive: this very process) is writing the run
        assert train.main(["--config", str(config), "--quiet", "--resume", str(run_dir)]) == 2
    assert f"{run_dir}: another process (pid {os.getpid()}) is writing this run" in \
        error_line(capsys.readouterr().err)
    assert files_of(run_dir) == before

    held = []
    real = trainer.save_loss_curve
    monkeypatch.setattr(trainer, "save_loss_curve", lambda path, losses: (
        held.append((path.parent / ".lock").read_text()), real(path, losses)))
    assert train.main(["--config", str(config), "--quiet", "max_steps=6"]) == 0  # a new run
    assert train.main(["--config", str(config), "--quiet", "max_steps=6", "--resume", str(run_dir)]) == 0
    assert held == [str(os.getpid())] * 4 and not list((tmp_path / "runs").glob("*/.lock"))


def test_resume_removes_the_temp_files_of_an_interrupted_run(run):
    config, run_dir = run
    leftovers = [run_dir / "checkpoints" / f".state-step-6.k2j4l5m6{TEMP_MARK}.pt",  # atomic_path's names
                 run_dir / f".loss_curve.a8b7c6d5{TEMP_MARK}.png",
                 run_dir / "samples" / "step-6" / f".0000-a-photo.q1w2e3r4{TEMP_MARK}.gif"]
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half written")
    assert train.main(["--config", str(config), "--quiet", "--resume", str(run_dir)]) == 0
    assert not any(path.exists() for path in leftovers)
    assert (run_dir / "checkpoints" / "state-step-4.pt").is_file()
