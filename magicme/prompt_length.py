"""The prompt-length check before any model loads: the base's own tokenizer files, the identities' token counts,
and the encoder's own counting (`PromptEncoder.check_length`, so its chunking is the one rule), without the text
encoder, UNet or VAE.

A prompt needing more chunks than the encoder takes used to be an error only after the models loaded (half a
minute for SD1.5). Here it costs the tokenizer's load (a fraction of a second). The identities' tokens are added to
the tokenizer as diffusers' `load_textual_inversion` adds them (`<name>`, `<name>_1`, …), and diffusers' own
multi-vector conversion expands them. A base given as a Hub id has no local tokenizer: its prompts are counted once
it has loaded, as before.
"""

from pathlib import Path

from omegaconf import DictConfig

from magicme.prompts import keyframes, token_for


def tokenizer_folder(model: DictConfig) -> Path | None:
    """The base's tokenizer folder (a single-file base borrows `base_config`'s); None when there is none locally."""
    base = Path(model.base)
    root = base if base.is_dir() else Path(model.base_config) if model.get("base_config") else None
    folder = root / "tokenizer" if root is not None else None
    return folder if folder is not None and (folder / "vocab.json").is_file() else None


def identity_tokens(path: Path, family: str) -> int:
    """How many tokens an identity file holds (read whole: identity files are small)."""
    from magicme.embeddings import load_embedding_file, load_sdxl_embedding_file

    return (load_sdxl_embedding_file(path)[0] if family == "sdxl" else load_embedding_file(path)).shape[0]


def count_prompt_tokens(encoder, samples) -> dict[str, int]:
    """Token count of every prompt text (identities expanded; each keyframe of a travelling prompt); too long a
    prompt is a `ConfigError` naming it. `encoder` is a PromptEncoder, or anything with its `check_length`."""
    counts = {}
    for s in samples:
        for key, prompt in (("prompt", s.prompt), ("negative_prompt", s.negative_prompt)):
            for text in keyframes(prompt).values():
                if text not in counts:
                    counts[text] = encoder.check_length(text, f"prompts: the {key} {text[:40]!r}…")
    return counts


def check_prompt_lengths(cfg: DictConfig, samples, embeddings: dict[str, Path]) -> dict[str, int] | None:
    """Every prompt's token count from the base's tokenizer files, before loading; None when the base has no local
    tokenizer (a Hub id)."""
    folder = tokenizer_folder(cfg.model)
    if folder is None:
        return None
    from diffusers.loaders.textual_inversion import TextualInversionLoaderMixin
    from transformers import CLIPTokenizer

    from magicme.prompt_encoding import PromptEncoder

    class Tokenizing(TextualInversionLoaderMixin):
        """What a PromptEncoder reads of a pipeline to count tokens: the tokenizer, and diffusers' conversion of a
        multi-vector identity token into its N tokens."""

        def __init__(self, tokenizer):
            self.tokenizer = tokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    for name, path in embeddings.items():
        token = token_for(name)
        tokenizer.add_tokens([token] + [f"{token}_{i}" for i in range(1, identity_tokens(path, cfg.model.family))])
    return count_prompt_tokens(PromptEncoder(Tokenizing(tokenizer), cfg.prompt_weighting), samples)
