"""Weighted and long prompts on the tiny bundle: exact encodings, bit-identity where nothing is weighted, and the
whole path through sample.py (the tiny tokenizer reads one token per character)."""

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import sample
from magicme.errors import ConfigError
from magicme.prompt_encoding import CHUNK_TOKENS, MAX_CHUNKS, Word, split_chunks
from tests.test_sampling import write_config


@pytest.fixture
def encoder(tiny_pipeline):
    tiny_pipeline.prompts.weighting = "comfy"
    yield tiny_pipeline.prompts
    tiny_pipeline.prompts.weighting = "comfy"


def diffusers_encoding(pipe, prompt: str) -> torch.Tensor:
    from magicme.prompts import to_pipeline_prompt

    return pipe.t2v.encode_prompt(to_pipeline_prompt(prompt), pipe.device, 1, False)[0]


def test_unweighted_short_prompts_encode_exactly_as_diffusers_does(tiny_pipeline, encoder):
    for prompt in ("a photo of <tinyperson> man", "a photo of embedding:tinyperson man, walking", ""):
        assert torch.equal(encoder.encode(prompt), diffusers_encoding(tiny_pipeline, prompt))


def test_weight_one_is_bit_identical_to_no_weight(encoder):
    assert torch.equal(encoder.encode("a (photo:1.0) of man"), encoder.encode("a photo of man"))
    encoder.weighting = "a1111"
    assert torch.equal(encoder.encode("a (photo:1.0) of man"), encoder.encode("a photo of man"))


def test_comfy_weights_move_tokens_away_from_the_empty_prompt(encoder):
    plain, weighted = encoder.encode("ab cd"), encoder.encode("ab (cd:1.5)")
    empty = encoder.encode("")
    # positions: 0 BOS, 1-2 "ab", 3-4 "cd" (one token per character in the tiny tokenizer)
    expected = plain.clone()
    expected[:, 3:5] = empty[:, 3:5] + 1.5 * (plain[:, 3:5] - empty[:, 3:5])
    assert torch.allclose(weighted, expected, atol=1e-6)
    assert torch.equal(weighted[:, :3], plain[:, :3]) and torch.equal(weighted[:, 5:], plain[:, 5:])


def test_a1111_weights_scale_tokens_and_keep_the_mean(encoder):
    encoder.weighting = "a1111"
    plain, weighted = encoder.encode("ab cd"), encoder.encode("ab (cd:1.5)")
    scale = torch.ones(plain.shape[1])
    scale[3:5] = 1.5
    expected = plain * scale[None, :, None]
    expected = expected * (plain.mean() / expected.mean())
    assert torch.allclose(weighted, expected, atol=1e-6)
    assert torch.allclose(weighted.mean(), plain.mean(), atol=1e-6)


def test_none_reads_parentheses_as_text(encoder):
    encoder.weighting = "none"
    assert encoder.count("(ab:1.5)") == len("(ab:1.5)")
    encoder.weighting = "comfy"
    assert encoder.count("(ab:1.5)") == 2


def test_long_prompts_are_encoded_in_chunks_not_cut(encoder):
    prompt = " ".join(["x"] * 100)  # 100 one-character words, one token each: a chunk of 75 and one of 25
    z = encoder.encode(prompt)
    assert z.shape[1] == 2 * 77
    assert torch.equal(z[:, :77], encoder.encode(" ".join(["x"] * CHUNK_TOKENS)))
    assert torch.equal(z[:, 77:], encoder.encode(" ".join(["x"] * 25)))
    with pytest.raises(ConfigError, match=f"more than {MAX_CHUNKS} chunks"):
        encoder.check_length(" ".join(["x"] * (MAX_CHUNKS * CHUNK_TOKENS + 1)), "prompts[0].prompt")


def chunk_lengths(encoder, prompt: str) -> list[int]:
    return [len(chunk.ids) for chunk in encoder.tokenize(prompt).chunks]


def test_comfy_moves_a_word_across_the_75th_token_whole_to_the_next_chunk(encoder):
    """ComfyUI's tokenize_with_weights: 37 two-token words fill 74 tokens; the 75th token is the first of "cde",
    which moves whole to the second chunk, leaving the first closed and padded at 74."""
    head = " ".join(["ab"] * 37)
    prompt = head + " cde f"
    chunks = encoder.tokenize(prompt).chunks
    assert [len(chunk.ids) for chunk in chunks] == [74, 4]
    assert chunks[0].ids == encoder.tokenize(head).ids and chunks[1].ids == encoder.tokenize("cde f").ids
    z = encoder.encode(prompt)
    assert torch.equal(z[:, :77], encoder.encode(head)) and torch.equal(z[:, 77:], encoder.encode("cde f"))
    # a word of MAX_WORD_TOKENS (8) or more tokens is split at the boundary instead; a 7-token word is not
    assert chunk_lengths(encoder, head + " " + "c" * 8) == [75, 7]
    assert chunk_lengths(encoder, head + " " + "c" * 7) == [74, 7]
    assert chunk_lengths(encoder, head + " " + "c" * 100) == [75, 75, 24]
    # an identity (4 vectors) is a word: it moves whole
    assert chunk_lengths(encoder, head + " <tinyperson>") == [74, 4]
    encoder.weighting = "none"  # no weights, the same chunking
    assert chunk_lengths(encoder, prompt) == [74, 4]


def test_a1111_backtracks_to_a_comma_at_most_20_tokens_back(encoder):
    """A1111's tokenize_line: when the 76th token arrives and the chunk's last comma is ≤ 20 tokens back, the
    tokens after the comma move to the next chunk; a comma further back changes nothing. ComfyUI keeps words,
    here one token each, so it cuts at 75."""
    near = " ".join(["x"] * 70) + ", " + " ".join(["y"] * 10)  # comma = token 71, 5 tokens before the end
    far = " ".join(["x"] * 50) + ", " + " ".join(["y"] * 30)  # comma = token 51, 25 tokens before the end
    assert chunk_lengths(encoder, near) == [75, 6] and chunk_lengths(encoder, far) == [75, 6]
    encoder.weighting = "a1111"
    chunks = encoder.tokenize(near).chunks
    assert [len(chunk.ids) for chunk in chunks] == [71, 10]
    assert chunks[0].ids == encoder.tokenize(" ".join(["x"] * 70) + ",").ids
    assert chunk_lengths(encoder, far) == [75, 6]
    assert chunk_lengths(encoder, " ".join(["x"] * 73) + " <tinyperson>") == [73, 4]  # an identity is never split


def test_split_chunks_is_the_one_chunking_function():
    """The pure function issue 23's length check reuses: words in, chunks out, by either rule."""
    words = [Word((1,) * 70, 1.0), Word((2,) * 3, 1.5), Word((3,) * 4, 1.0)]
    comfy = split_chunks(words, "comfy")
    assert [chunk.ids for chunk in comfy] == [[1] * 70 + [2] * 3, [3] * 4]
    assert comfy[0].weights == [1.0] * 70 + [1.5] * 3 and comfy[1].weights == [1.0] * 4
    long = split_chunks([*words[:2], Word((3,) * 9, 1.0)], "comfy")  # 9 tokens: split, 2 of them fit
    assert [chunk.ids for chunk in long] == [[1] * 70 + [2] * 3 + [3] * 2, [3] * 7]
    comma = split_chunks([Word((5,), 1.0)] * 60 + [Word((0,), 1.0)] + [Word((6,), 1.0)] * 20, "a1111", comma=0)
    assert [len(chunk.ids) for chunk in comma] == [61, 20]
    assert [len(chunk.ids) for chunk in split_chunks([], "a1111")] == [0]
    with pytest.raises(ValueError, match="unknown chunking rule"):
        split_chunks(words, "nope")


@pytest.mark.parametrize("weighting", ["comfy", "a1111", "none"])
def test_the_shorter_conditioning_is_repeated_not_padded(encoder, weighting):
    """ComfyUI's CONDCrossAttn (and, in attention, A1111's separate passes): the shorter of prompt and negative is
    repeated to the least common multiple of their chunk counts, bit for bit, never padded with the empty prompt."""
    encoder.weighting = weighting
    short, two, three = "a photo of man", " ".join(["x"] * 100), " ".join(["y"] * 200)
    positive, negative = encoder.encode_pair(short, two)
    one = encoder.encode(short)
    assert one.shape[1] == 77 and negative.shape[1] == 2 * 77
    assert torch.equal(positive, torch.cat([one, one], dim=1)) and torch.equal(negative, encoder.encode(two))
    positive, negative = encoder.encode_pair(two, three)  # 2 and 3 chunks: both repeated to 6
    assert positive.shape[1] == negative.shape[1] == 6 * 77
    assert torch.equal(positive, encoder.encode(two).repeat(1, 3, 1))
    assert torch.equal(negative, encoder.encode(three).repeat(1, 2, 1))
    assert encoder.chunks(short, two, three) == 6


def test_a_travelling_prompt_is_repeated_to_the_common_chunk_count(tiny_pipeline, encoder):
    """Prompt travel: every keyframe's conditioning is repeated to the least common multiple of all of them."""
    short, long = "a photo of man", " ".join(["x"] * 100)
    with tiny_pipeline.conditioned({0: short, 1: long}, "y " * 160, 2, {}) as kwargs:
        rows = kwargs["prompt_embeds"]
    assert rows.shape[1] == 6 * 77  # 1, 2 and 3 chunks
    assert torch.equal(rows[0], encoder.encode(short).repeat(1, 6, 1)[0])


def frames_of(run_dir, record) -> np.ndarray:
    folder = run_dir / record["files"]["frames"]
    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))])


def render(tmp_path, tiny_bundle, name: str, prompts: list[str], *overrides: str):
    out = tmp_path / name
    config = write_config(tmp_path, tiny_bundle, prompts=prompts, frames=2, output_dir=str(out))
    assert sample.main(["--config", str(config), "--quiet", "save_frames=true", *overrides]) == 0
    (run_dir,) = out.iterdir()
    records = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    return run_dir, [frames_of(run_dir, r) for r in records], records


def test_weights_and_long_prompts_reach_the_video(tmp_path, tiny_bundle):
    head = "a photo of <tinyperson> man, " + "y" * 60  # already more than 75 tokens with the identity's 4
    prompts = ["<tinyperson> man", "(<tinyperson> man:1.0)", "(<tinyperson> man:1.6)", head + " walking",
               head + " running"]
    run_dir, videos, records = render(tmp_path, tiny_bundle, "comfy", prompts)
    plain, weight_one, weighted, long_a, long_b = videos
    assert np.array_equal(plain, weight_one) and not np.array_equal(plain, weighted)
    assert not np.array_equal(long_a, long_b)  # the words after token 75 are read
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert [p["tokens"][0] for p in saved["prompts"]] == [r["tokens"] for r in records]
    assert records[0]["tokens"] == 4 + len("man") and records[3]["tokens"] > CHUNK_TOKENS  # identity: 4 vectors
    _, literal, _ = render(tmp_path, tiny_bundle, "none", prompts[2:3], "prompt_weighting=none")
    assert not np.array_equal(literal[0], weighted)


@pytest.mark.parametrize("prompt, message", [
    ("a (photo of man", "unbalanced parentheses"),
    ("a (photo:abc) of man", "is not a number"),
    ("a (photo:0) of man", "must be > 0"),
])
def test_bad_weighting_is_one_line_before_loading(tmp_path, tiny_bundle, capsys, prompt, message):
    config = write_config(tmp_path, tiny_bundle, prompts=[prompt])
    assert sample.main(["--config", str(config), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: prompts[0].prompt: ") and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()
