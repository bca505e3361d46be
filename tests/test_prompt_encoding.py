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
from magicme.prompt_encoding import CHUNK_TOKENS, MAX_CHUNKS
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
    positive, negative = encoder.encode_pair(prompt, "blurry")
    assert positive.shape == negative.shape
    assert torch.equal(negative[:, :77], encoder.encode("blurry"))
    assert torch.equal(negative[:, 77:], encoder.encode(""))  # padded with the empty prompt
    with pytest.raises(ConfigError, match=f"more than {MAX_CHUNKS} chunks"):
        encoder.check_length(" ".join(["x"] * (MAX_CHUNKS * CHUNK_TOKENS + 1)), "prompts[0].prompt")


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
