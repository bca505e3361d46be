import pytest
import torch
from safetensors.torch import save_file

from magicme.embeddings import (
    find_embeddings, load_embedding_file, load_into_pipeline, resolve_names, save_embedding,
)
from magicme.prompts import malformed_references, referenced_names, strip_id_tokens, to_pipeline_prompt
from magicme.errors import ConfigError


def test_prompt_syntax():
    prompt = "a photo of embedding:altman man and <lisa> woman, embedding:altman.pt again"
    assert referenced_names(prompt) == ["altman", "lisa"]
    assert to_pipeline_prompt(prompt) == "a photo of <altman> man and <lisa> woman, <altman> again"
    assert strip_id_tokens("a photo of embedding:altman man in superman costume") == "a photo of man in superman costume"
    assert strip_id_tokens("<altman> man, smiling") == "man, smiling"


@pytest.mark.parametrize("prompt, bad", [
    ("a photo of embedding:ann man", []), ("embedding:ann.pt, walking", []), ("(embedding:ann:1.2) man", []),
    ("photo of embedding:ann.jpg man", ["embedding:ann.jpg"]), ("embedding: man", ["embedding:"]),
    ("embedding:änn man", ["embedding:änn"]),
])
def test_malformed_identity_references_are_found(prompt, bad):
    assert malformed_references(prompt) == bad


def test_two_files_of_one_identity_are_an_error(tmp_path):
    save_embedding(tmp_path / "ann.pt", torch.randn(2, 8), "ann")
    save_embedding(tmp_path / "bob.pt", torch.randn(2, 8), "bob")
    assert set(find_embeddings(tmp_path)) == {"ann", "bob"}
    save_embedding(tmp_path / "ann.safetensors", torch.randn(2, 8), "ann")
    with pytest.raises(ConfigError, match="ann.safetensors: identity 'ann' also has the file ann.pt"):
        find_embeddings(tmp_path)


def test_a1111_pt_and_safetensors_and_diffusers_bin(tmp_path):
    vectors = torch.randn(4, 32)
    save_embedding(tmp_path / "ann.pt", vectors, "ann")
    raw = torch.load(tmp_path / "ann.pt", weights_only=True)
    assert set(raw) >= {"string_to_param"} and torch.equal(raw["string_to_param"]["*"], vectors)
    save_embedding(tmp_path / "bob.safetensors", vectors, "bob")
    torch.save({"<cat>": vectors[0]}, tmp_path / "cat.bin")
    assert torch.equal(load_embedding_file(tmp_path / "ann.pt"), vectors)
    assert torch.equal(load_embedding_file(tmp_path / "bob.safetensors"), vectors)
    assert load_embedding_file(tmp_path / "cat.bin").shape == (1, 32)
    assert set(find_embeddings(tmp_path)) == {"ann", "bob", "cat"}


def test_bad_files_give_clear_errors(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ConfigError, match="junk.pt: not a readable embedding file"):
        load_embedding_file(tmp_path / "junk.pt")
    save_file({"a": torch.zeros(2, 3), "b": torch.zeros(2, 3)}, str(tmp_path / "two.safetensors"))
    with pytest.raises(ConfigError, match="two.safetensors: no embedding tensor found"):
        load_embedding_file(tmp_path / "two.safetensors")


def test_unknown_identity_lists_available(tmp_path):
    save_embedding(tmp_path / "ann.pt", torch.zeros(2, 8), "ann")
    with pytest.raises(ConfigError, match=r"unknown identity 'bob'.*available: ann"):
        resolve_names(["a photo of embedding:bob man"], find_embeddings(tmp_path))


def test_loads_into_pipeline_and_expands_tokens(tiny_pipeline, tmp_path):
    pipe = tiny_pipeline.t2v
    expanded = pipe.maybe_convert_prompt("a photo of <tinyperson> man", pipe.tokenizer)
    assert expanded == "a photo of <tinyperson> <tinyperson>_1 <tinyperson>_2 <tinyperson>_3 man"
    ids = pipe.tokenizer.convert_tokens_to_ids(["<tinyperson>", "<tinyperson>_3"])
    weights = pipe.text_encoder.get_input_embeddings().weight
    assert all(i is not None and i < weights.shape[0] for i in ids)


def test_width_mismatch_is_a_clear_error(tiny_pipeline, tmp_path):
    save_embedding(tmp_path / "wide.pt", torch.zeros(4, 768), "wide")
    with pytest.raises(ConfigError, match=r"width 768.*expects 32"):
        load_into_pipeline(tiny_pipeline.t2v, {"wide": tmp_path / "wide.pt"})


def test_capitalised_identity_names_still_match(tiny_pipeline, tmp_path):
    save_embedding(tmp_path / "Ann.pt", torch.randn(2, 32), "Ann")
    load_into_pipeline(tiny_pipeline.t2v, {"Ann": tmp_path / "Ann.pt"})
    prompt = to_pipeline_prompt("a photo of embedding:Ann woman")
    assert prompt == "a photo of <ann> woman"
    ids = tiny_pipeline.t2v.tokenizer(tiny_pipeline.t2v.maybe_convert_prompt(prompt, tiny_pipeline.t2v.tokenizer)).input_ids
    assert tiny_pipeline.t2v.tokenizer.convert_tokens_to_ids("<ann>_1") in ids
