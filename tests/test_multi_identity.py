"""train.py with several identities: configs expanded per identity, models loaded once, no identity leaking into
the next, per-identity resume (`--resume auto`), the summary table, and the sharing out under accelerate."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from omegaconf import OmegaConf
from PIL import Image

import train
from magicme.checkpoint_io import load_checkpoint
from magicme.embeddings import load_embedding_file
from magicme.errors import ConfigError
from magicme.training import trainer
from magicme.training.config import TrainConfig, expand_identities, load_train_configs
from magicme.training.identities import Outcome, assign, summary_table
from tests.test_training import error_line, write_train_config

NAMES = ("ann", "bob", "carl")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """dataset/<name>/ with two 48² noise photos each, different for every identity."""
    root = tmp_path_factory.mktemp("dataset")
    for seed, name in enumerate(NAMES):
        rng = np.random.default_rng(seed)
        (root / name).mkdir()
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def team_config(tmp_path: Path, tiny_bundle, dataset: Path, names, **changes) -> Path:
    """A config training `names` (identities:, photos in dataset/{name}), 4 steps, checkpoints at 2 and 4."""
    path = write_train_config(tmp_path, tiny_bundle, dataset / "ann", max_steps=4, checkpoint_every=2, **changes)
    cfg = yaml.safe_load(path.read_text())
    del cfg["name"]
    cfg.update(identities=list(names), images_dir=f"{dataset}/{{name}}", class_words={"ann": "woman"} if "ann" in names else {})
    path.write_text(yaml.safe_dump(cfg))
    return path


def embedding_of(output_dir: Path, name: str) -> torch.Tensor:
    (pt,) = output_dir.glob(f"{name}-*/{name}.pt")
    return load_embedding_file(pt)


def test_identities_expand_to_one_config_each():
    base = OmegaConf.structured(TrainConfig)
    cfg = OmegaConf.merge(base, {"identities": ["ann", "bob"], "class_words": {"ann": "woman"}})
    ann, bob = expand_identities(cfg)
    assert (ann.name, ann.images_dir, ann.class_word) == ("ann", "dataset/ann", "woman")
    assert (bob.name, bob.images_dir, bob.class_word) == ("bob", "dataset/bob", "man")
    assert ann.identities == [] and ann.class_words == {} and cfg.identities == ["ann", "bob"]
    custom = expand_identities(OmegaConf.merge(cfg, {"images_dir": "photos/{name}/train"}))
    assert [c.images_dir for c in custom] == ["photos/ann/train", "photos/bob/train"]
    single = OmegaConf.merge(base, {"name": "ann", "images_dir": "x"})
    assert expand_identities(single) == [single]


@pytest.mark.parametrize("change,message", [
    ({"name": "ann"}, "name and identities both set"),
    ({"identities": ["ann", "ann"]}, "identities: 'ann' is listed twice"),
    ({"class_words": {"zoe": "woman"}}, "class_words: 'zoe' is not in identities"),
    ({"images_dir": "dataset/all"}, "images_dir: 'dataset/all' has no {name}"),
])
def test_identity_list_errors(change, message):
    cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), {"identities": ["ann", "bob"]}, change)
    with pytest.raises(ConfigError, match=message.replace("{", r"\{").replace("}", r"\}")):
        expand_identities(cfg)
    with pytest.raises(ConfigError, match="class_words: only with identities"):
        expand_identities(OmegaConf.merge(OmegaConf.structured(TrainConfig), {"class_words": {"a": "man"}}))


def test_several_config_files_must_share_the_models_and_differ_in_name(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("name: ann\nimages_dir: x\n")
    b.write_text("name: bob\nimages_dir: y\nmixed_precision: bf16\n")
    with pytest.raises(ConfigError, match=f"mixed_precision: 'no' in {a} but 'bf16' in {b}; identities trained"):
        load_train_configs([a, b])
    b.write_text("identities: [carl, ann]\nimages_dir: d/{name}\n")
    with pytest.raises(ConfigError, match=f"name: 'ann' is in both {a} and {b}"):
        load_train_configs([a, b])
    b.write_text("identities: [carl, bob]\nimages_dir: d/{name}\n")
    assert [c.name for c in load_train_configs([a, b], ["max_steps=7"])] == ["ann", "carl", "bob"]
    assert {c.max_steps for c in load_train_configs([a, b], ["max_steps=7"])} == {7}


def test_assignment_is_balanced_longest_first_and_deterministic():
    assert assign([400, 400, 200, 200, 100], 2) == [0, 1, 0, 1, 0]
    assert assign([100, 400, 0, 300], 2) == [1, 0, 0, 1]
    assert assign([5, 5, 5], 1) == [0, 0, 0]
    assert assign([1, 1], 4) == [0, 1]


def test_summary_table_text():
    table = summary_table([Outcome("ann", "trained", 400, 0.123456, 65.04, "runs/ann-1/ann.pt"),
                           Outcome("bobby", "finished", 200, None, 0.0, "runs/bobby-2/bobby.pt")])
    assert table.splitlines() == [
        "identity  status    steps  final loss  seconds  output",
        "ann       trained   400    0.12346     65.0     runs/ann-1/ann.pt",
        "bobby     finished  200    -           0.0      runs/bobby-2/bobby.pt",
    ]


def test_one_process_trains_identities_in_turn_without_leaks(tmp_path, tiny_bundle, dataset, monkeypatch, capsys):
    """ann then bob: the models load once, and bob's embedding is bit-identical to bob trained alone."""
    loads = []
    real = trainer.load_base
    monkeypatch.setattr(trainer, "load_base", lambda *a: loads.append(real(*a)) or loads[-1])
    both, alone = tmp_path / "both", tmp_path / "alone"
    both.mkdir(), alone.mkdir()
    assert train.main(["--config", str(team_config(both, tiny_bundle, dataset, ["ann", "bob"])), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert len(loads) == 1
    # the text encoder holds the base's rows and the last identity's 4, not ann's as well
    original = real(str(tiny_bundle["sd15"]), None, torch.float32).text_encoder.get_input_embeddings().weight
    after = loads[0].text_encoder.get_input_embeddings().weight
    assert after.shape[0] == original.shape[0] + 4 and torch.equal(after[:-4], original)
    assert torch.equal(after[-4:].detach(), embedding_of(both / "runs", "bob"))
    assert train.main(["--config", str(team_config(alone, tiny_bundle, dataset, ["bob"])), "--quiet"]) == 0
    assert torch.equal(embedding_of(both / "runs", "bob"), embedding_of(alone / "runs", "bob"))
    assert not torch.equal(embedding_of(both / "runs", "ann"), embedding_of(both / "runs", "bob"))
    # the summary table, and the class word in every embedding file (ann's from class_words)
    rows = [line.split() for line in printed.splitlines()[1:3]]
    assert [r[:3] for r in rows] == [["ann", "trained", "4"], ["bob", "trained", "4"]]
    (ann_pt,) = (both / "runs").glob("ann-*/ann.pt")
    assert rows[0][5] == str(ann_pt) and load_checkpoint(ann_pt)["class_word"] == "woman"
    (bob_run,) = (both / "runs").glob("bob-*")
    assert load_checkpoint(bob_run / "bob.pt")["class_word"] == "man"
    from safetensors import safe_open
    with safe_open(bob_run / "checkpoints" / "bob-step-4.safetensors", "pt") as f:
        assert f.metadata() == {"class_word": "man"}


def test_resume_auto_skips_finished_continues_partial_and_starts_new(tmp_path, tiny_bundle, dataset, capsys,
                                                                    monkeypatch):
    config = team_config(tmp_path, tiny_bundle, dataset, ["ann", "bob"])
    assert train.main(["--config", str(config), "--quiet", "--resume", "auto"]) == 0  # nothing yet: both start
    runs = tmp_path / "runs"
    (ann_run,), (bob_run,) = runs.glob("ann-*"), runs.glob("bob-*")
    straight = embedding_of(runs, "bob")
    # bob was killed after its step-2 checkpoint: no step-4 files, no bob.pt
    for path in (bob_run / "bob.pt", *bob_run.glob("checkpoints/*step-4*")):
        path.unlink()
    ann_files = {p: p.stat().st_mtime_ns for p in ann_run.rglob("*")}
    capsys.readouterr()
    config = team_config(tmp_path, tiny_bundle, dataset, ["ann", "bob", "carl"])
    assert train.main(["--config", str(config), "--quiet", "--resume", "auto"]) == 0
    rows = [line.split()[:3] for line in capsys.readouterr().out.splitlines()[1:4]]
    assert rows == [["ann", "finished", "4"], ["bob", "resumed", "4"], ["carl", "trained", "4"]]
    assert {p: p.stat().st_mtime_ns for p in ann_run.rglob("*")} == ann_files  # ann untouched
    assert sorted(p.name.split("-")[0] for p in runs.iterdir()) == ["ann", "bob", "carl"]  # bob continued in place
    assert torch.equal(embedding_of(runs, "bob"), straight)  # bit-identical to the uninterrupted run
    # all finished: nothing to do, no model loads
    monkeypatch.setattr(trainer, "load_base", lambda *a: pytest.fail("loaded models with nothing to train"))
    assert train.main(["--config", str(config), "--quiet", "--resume", "auto"]) == 0
    assert [line.split()[1] for line in capsys.readouterr().out.splitlines()[1:4]] == ["finished"] * 3


def test_several_identities_need_latest_or_auto_and_several_files_work(tmp_path, tiny_bundle, dataset, capsys):
    config = team_config(tmp_path, tiny_bundle, dataset, ["ann", "bob"])
    assert train.main(["--config", str(config), "--quiet", "--resume", str(tmp_path)]) == 2
    assert f"--resume {tmp_path}: a run folder or state file continues one identity" in \
        error_line(capsys.readouterr().err)
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    a = write_train_config(tmp_path / "a", tiny_bundle, dataset / "ann", name="ann")
    b = write_train_config(tmp_path / "b", tiny_bundle, dataset / "bob", name="ann")
    assert train.main(["--config", str(a), str(b), "max_steps=1", "--quiet"]) == 2
    assert "name: 'ann' is in both" in error_line(capsys.readouterr().err)
    assert not (tmp_path / "a" / "runs").exists() and not (tmp_path / "b" / "runs").exists()
    b.write_text(b.read_text().replace("name: ann", "name: bob"))
    assert train.main(["--config", str(a), str(b), "max_steps=1", "--quiet"]) == 0
    assert len(list((tmp_path / "a" / "runs").glob("ann-*/ann.pt"))) == 1
    assert len(list((tmp_path / "b" / "runs").glob("bob-*/bob.pt"))) == 1


def test_a_fresh_vocabulary_is_the_base_as_loaded(tiny_bundle):
    from magicme.families.sd15 import load_base
    from magicme.training.tokens import Vocabulary, add_identity_tokens, bake_identity

    base = load_base(str(tiny_bundle["sd15"]), None, torch.float32)
    rows = base.text_encoder.get_input_embeddings().weight.detach().clone()
    vocabulary = Vocabulary(base.tokenizer, base.text_encoder)
    for name in ("ann", "bob"):
        tokenizer = vocabulary.fresh()
        assert len(tokenizer) == len(base.tokenizer) and torch.equal(
            base.text_encoder.get_input_embeddings().weight, rows)
        bake_identity(base.text_encoder, add_identity_tokens(tokenizer, base.text_encoder, name, 4, "man"))
        assert base.text_encoder.get_input_embeddings().weight.shape[0] == len(rows) + 4
    assert len(base.tokenizer) == len(rows)  # the loaded tokenizer itself never gets identity tokens


def test_two_processes_share_out_the_identities_and_match_one_process(tmp_path, tiny_bundle, dataset):
    """torchrun with 2 CPU processes (gloo; what `accelerate launch` runs per node): ann on one, bob on the other,
    each embedding bit-identical to one process training both."""
    sharded, single = tmp_path / "sharded", tmp_path / "single"
    sharded.mkdir(), single.mkdir()
    config = team_config(sharded, tiny_bundle, dataset, ["ann", "bob"])
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", "train.py", "--config", str(config), "--quiet"],
                          env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    logs = {name: next((sharded / "runs").glob(f"{name}-*/train.log")).read_text() for name in ("ann", "bob")}
    assert "in process 0 of 2" in logs["ann"] and "in process 1 of 2" in logs["bob"]
    assert done.stdout.count("identity  status") == 1  # the main process prints the table of both
    # the reference in a fresh process with one thread as well: the sums inside a convolution depend on the thread
    # count, and on kernels an earlier test in this process may have prepared for another one
    config = team_config(single, tiny_bundle, dataset, ["ann", "bob"])
    done = subprocess.run([sys.executable, "train.py", "--config", str(config), "--quiet"], env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    for name in ("ann", "bob"):
        assert torch.equal(embedding_of(sharded / "runs", name), embedding_of(single / "runs", name))
