"""Grids (prompts × seeds × identities filling `{id}`) and the names of their samples: stable, order-free, and new
for any change that can change a pixel."""

import json
import shutil

import pytest
import yaml
from omegaconf import OmegaConf

import sample
from magicme.embeddings import load_embedding_file, save_embedding
from magicme.errors import ConfigError
from magicme.naming import file_fingerprints, name_samples
from magicme.schema import check_sample_config, expand_samples, load_sample_config
from tests.test_resume import one_thread  # noqa: F401 (a fixture)
from tests.test_sampling import write_config


@pytest.fixture
def embeddings(tmp_path, tiny_bundle):
    """ann.pt (the tiny identity: class word "man"), bob.safetensors ("woman"), carl.pt (no class word)."""
    folder = tmp_path / "emb"
    folder.mkdir()
    vectors = load_embedding_file(tiny_bundle["embedding"])
    shutil.copy(tiny_bundle["embedding"], folder / "ann.pt")
    save_embedding(folder / "bob.safetensors", vectors, "bob", class_word="woman")
    save_embedding(folder / "carl.pt", vectors, "carl")
    return folder


def grid_config(tmp_path, embeddings, **keys):
    cfg = {"model": {"embeddings_dir": str(embeddings)}, "seeds": [1, 2],
           "prompts": ["a photo of {id} walking", {"prompt": "{id} running", "seeds": [5]}], **keys}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return load_sample_config(path)


def test_prompts_times_seeds_times_identities_in_grid_order(tmp_path, embeddings):
    samples = expand_samples(grid_config(tmp_path, embeddings, identities=["ann", "bob"]))
    assert [(s.prompt, s.seed, s.identity) for s in samples] == [
        ("a photo of embedding:ann man walking", 1, "ann"), ("a photo of embedding:bob woman walking", 1, "bob"),
        ("a photo of embedding:ann man walking", 2, "ann"), ("a photo of embedding:bob woman walking", 2, "bob"),
        ("embedding:ann man running", 5, "ann"), ("embedding:bob woman running", 5, "bob")]
    assert [s.index for s in samples] == list(range(6))


def test_all_takes_every_embedding_file_and_class_words_override_the_files(tmp_path, embeddings):
    cfg = grid_config(tmp_path, embeddings, identities="all", class_words={"carl": "person", "ann": "woman"},
                      prompts=[{"prompt": {0: "{id} smiling", 4: "{id} (crying:1.2)"}, "negative_prompt": "not {id}"}],
                      seeds=[3])
    samples = expand_samples(cfg)
    assert [s.identity for s in samples] == ["ann", "bob", "carl"]
    assert samples[0].prompt == {0: "embedding:ann woman smiling", 4: "embedding:ann woman (crying:1.2)"}
    assert samples[2].negative_prompt == "not embedding:carl person"
    assert samples[1].prompt[0] == "embedding:bob woman smiling"  # bob's own file says woman


def test_random_seeds_are_shared_by_the_identities_of_a_prompt(tmp_path, embeddings):
    samples = expand_samples(grid_config(tmp_path, embeddings, identities=["ann", "bob"], seeds=[-1]))
    assert samples[0].seed == samples[1].seed != -1


@pytest.mark.parametrize("keys, message", [
    ({"identities": ["ann", "dan"]}, "identities: 'dan' has no embedding file in .*; available: ann, bob, carl"),
    ({"identities": ["carl"]}, r"identities: 'carl' has no class word .* add class_words: \{carl: man\}"),
    ({"identities": ["ann"], "prompts": ["{id} walking", "a photo"]}, r"prompts\[1\].prompt: 'a photo' has no \{id\}"),
    ({"identities": ["ann"], "prompts": [{"prompt": {0: "{id} smiling", 4: "crying"}}]},
     r"prompts\[0\].prompt\[4\]: 'crying' has no \{id\}"),
    ({}, r"prompts\[0\].prompt: \{id\} is filled only for a grid; set identities"),
    ({"identities": ["ann"], "class_words": {"zed": "man"}}, "class_words: 'zed' is not one of the identities"),
    ({"identities": "ann"}, "identities: 'ann' must be a list of names"),
    ({"identities": ["ann", "ann"]}, "lists an identity twice"),
    ({"identities": ["ann"], "class_words": {"ann": "(man"}}, "class_words.ann: '\\(man' must be plain words"),
])
def test_bad_grids_are_one_clear_error(tmp_path, embeddings, keys, message):
    with pytest.raises(ConfigError, match=message):
        expand_samples(grid_config(tmp_path, embeddings, **keys))


def test_a_grid_renders_each_identity_through_sample_py(tmp_path, tiny_bundle):
    twin = tmp_path / "emb"
    twin.mkdir()
    shutil.copy(tiny_bundle["embedding"], twin / "tinyperson.pt")
    save_embedding(twin / "twin.safetensors", load_embedding_file(tiny_bundle["embedding"]), "twin",
                   class_word="woman")
    config = write_config(tmp_path, tiny_bundle, prompts=["a photo of {id}"], identities="all",
                          **{"model.embeddings_dir": str(twin)})
    assert sample.main(["--config", str(config), "--quiet", "--run-dir", str(tmp_path / "run"), "formats=[gif]"]) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert [(r["identity"], r["prompt"]) for r in records] == [
        ("tinyperson", "a photo of embedding:tinyperson man"), ("twin", "a photo of embedding:twin woman")]
    assert [r["name"].split("-")[0] for r in records] == ["tinyperson", "twin"]
    a, b = ((tmp_path / "run" / r["files"]["gif"]).read_bytes() for r in records)
    assert a != b  # each identity's prompt reached its video
    saved = OmegaConf.load(tmp_path / "run" / "config.yaml")
    assert list(saved.identities) == ["tinyperson", "twin"] and saved.class_words.twin == "woman"


# --- names ---------------------------------------------------------------------------------------------------------

def names(cfg) -> dict:
    """{(prompt, seed, identity): ((stage, hash), ...)} of a config's samples."""
    samples, embeddings = check_sample_config(cfg)
    return {(str(s.prompt), s.seed, s.identity): s.hashes
            for s in name_samples(cfg, samples, file_fingerprints(cfg, embeddings))}


@pytest.fixture
def base_cfg(tmp_path, tiny_bundle):
    return load_sample_config(write_config(tmp_path, tiny_bundle, stages=["t2v", "face"],
                                           **{"face.clipseg_model": str(tiny_bundle["clipseg"])}))


def test_names_are_stable_across_runs_and_prompt_order(base_cfg):
    """(Across processes: tests/test_sharding.py compares a 2-process launch with a run in this process.)"""
    first = names(base_cfg)
    assert names(base_cfg) == first and len({h for hashes in first.values() for h in hashes}) == 4
    reordered = base_cfg.copy()
    reordered.prompts = list(reversed(list(base_cfg.prompts)))
    assert names(reordered) == first


@pytest.mark.parametrize("override, t2v_renamed, face_renamed", [
    ("steps=3", True, True),
    ("gamma=0.2", True, True),
    ("face.strength=0.5", False, True),
    ("fps=5", False, False),
    ("output_dir=elsewhere", False, False),
    ("formats=[gif]", False, False),
])
def test_a_changed_setting_renames_exactly_the_videos_it_changes(base_cfg, override, t2v_renamed, face_renamed):
    before = names(base_cfg)
    changed = OmegaConf.merge(base_cfg, OmegaConf.from_dotlist([override]))
    after = names(changed)
    assert all((a[0] != b[0]) == t2v_renamed and (a[1] != b[1]) == face_renamed
               for a, b in zip(before.values(), after.values()))


def test_unused_stage_blocks_rename_nothing_and_new_keys_rename_everything(base_cfg):
    t2v_only = OmegaConf.merge(base_cfg, {"stages": ["t2v"]})
    before = names(t2v_only)
    assert names(OmegaConf.merge(t2v_only, {"face": {"strength": 0.1}})) == before
    OmegaConf.set_struct(t2v_only, False)
    t2v_only.some_future_key = 1  # a key nobody listed as harmless counts as pixel-affecting
    assert all(a != b for a, b in zip(before.values(), names(t2v_only).values()))


def test_names_follow_file_contents_not_paths(tmp_path, tiny_bundle, base_cfg):
    before = names(base_cfg)
    copy = shutil.copytree(tiny_bundle["sd15"], tmp_path / "moved" / "sd15")
    assert names(OmegaConf.merge(base_cfg, {"model": {"base": str(copy)}})) == before
    config = copy / "scheduler" / "scheduler_config.json"
    config.write_text(config.read_text() + " ")
    assert all(a != b for a, b in zip(before.values(), names(OmegaConf.merge(base_cfg, {"model": {"base": str(copy)}})).values()))
