"""Prompts → text-encoder conditioning as ComfyUI and A1111 compute it: weighted spans, and prompts longer than the
75 tokens CLIP reads at once.

A prompt is parsed into (text, weight) spans (magicme/prompt_weights.py), identity references are rewritten to
their tokens, and the token ids are cut into chunks of 75. Each chunk is encoded on its own as BOS + 75 tokens + EOS
(padded to 77), and the chunks are concatenated along the token axis — what ComfyUI and A1111 do, so a 150-token
negative prompt is read whole instead of cut. Weights then scale each token's embedding:

- `comfy`: z ← z_empty + w · (z − z_empty) at every token of weight w ≠ 1, against the encoding of the empty prompt
  (ComfyUI's SD1 clip);
- `a1111`: z ← z · w, then rescaled so the chunk's mean is unchanged (A1111's `EmphasisOriginal`);
- `none`: the text goes to CLIP as written.

A prompt without weights (or with weight 1.0 everywhere) of at most 75 tokens gives exactly the tensor diffusers'
own `encode_prompt` gives: same ids, same single encoder call.
"""

from dataclasses import dataclass

import torch

from magicme.errors import ConfigError
from magicme.prompt_weights import parse_weighted
from magicme.prompts import to_pipeline_prompt

CHUNK_TOKENS = 75  # CLIP's 77 positions less BOS and EOS
MAX_CHUNKS = 8  # 600 tokens: longer is surely a mistake (a pasted file), not a prompt


@dataclass
class TokenizedPrompt:
    ids: list[int]  # without BOS/EOS, identity tokens expanded
    weights: list[float]  # one per id

    @property
    def chunks(self) -> int:
        return max(1, -(-len(self.ids) // CHUNK_TOKENS))


class PromptEncoder:
    """Encodes prompts with a diffusers pipeline's tokenizer and text encoder (and its loaded identities).

    `tokenizer` / `text_encoder` select another pair of the pipeline's (SD-XL's second), and `hidden_layer` a
    hidden state instead of the last one (SD-XL reads the penultimate, -2)."""

    def __init__(self, pipeline, weighting: str = "comfy", tokenizer=None, text_encoder=None,
                 hidden_layer: int | None = None):
        self.pipeline, self.weighting = pipeline, weighting
        self._tokenizer, self._text_encoder, self.hidden_layer = tokenizer, text_encoder, hidden_layer

    @property
    def tokenizer(self):
        return self._tokenizer if self._tokenizer is not None else self.pipeline.tokenizer

    @property
    def text_encoder(self):
        return self._text_encoder if self._text_encoder is not None else self.pipeline.text_encoder

    def tokenize(self, prompt: str) -> TokenizedPrompt:
        """Token ids and weights of a prompt; `<name>` / `embedding:name` become the identity's N tokens."""
        ids, weights = [], []
        for text, weight in parse_weighted(prompt, self.weighting):
            text = self.pipeline.maybe_convert_prompt(to_pipeline_prompt(text), self.tokenizer)
            span = self.tokenizer(text, add_special_tokens=False).input_ids
            ids += span
            weights += [weight] * len(span)
        return TokenizedPrompt(ids, weights)

    def count(self, prompt: str) -> int:
        """Tokens of a prompt as the text encoder reads it (without BOS/EOS)."""
        return len(self.tokenize(prompt).ids)

    def check_length(self, prompt: str, where: str) -> int:
        """The prompt's token count; a `ConfigError` naming `where` when it needs more than MAX_CHUNKS chunks."""
        tokens = self.tokenize(prompt)
        if tokens.chunks > MAX_CHUNKS:
            raise ConfigError(f"{where}: {len(tokens.ids)} tokens is more than {MAX_CHUNKS} chunks of {CHUNK_TOKENS} "
                              f"({MAX_CHUNKS * CHUNK_TOKENS} tokens); shorten it")
        return len(tokens.ids)

    def chunk_ids(self, ids: list[int], device: torch.device) -> torch.Tensor:
        """(1, 77): BOS + ids + EOS, padded as diffusers pads."""
        tok = self.tokenizer
        row = [tok.bos_token_id, *ids, tok.eos_token_id]
        row += [tok.pad_token_id] * (tok.model_max_length - len(row))
        return torch.tensor([row], device=device)

    @torch.no_grad()
    def encode_chunk(self, ids: list[int], device: torch.device) -> torch.Tensor:
        """(1, 77, D): the chunk's row through the text encoder once."""
        encoder = self.text_encoder
        if self.hidden_layer is None:
            return encoder(self.chunk_ids(ids, device), attention_mask=None)[0].to(encoder.dtype)
        out = encoder(self.chunk_ids(ids, device), attention_mask=None, output_hidden_states=True)
        return out.hidden_states[self.hidden_layer].to(encoder.dtype)

    def encode(self, prompt: str, chunks: int | None = None, device: torch.device | None = None) -> torch.Tensor:
        """(1, 77 · chunks, D) conditioning of `prompt`; padded with empty chunks up to `chunks`. The empty chunk
        is encoded only when a weight or the padding needs it. `device`: the pipeline's execution device, which
        diffusers finds by walking every module (milliseconds a call), so callers look it up once."""
        device = device or self.pipeline._execution_device
        tokens = self.tokenize(prompt)
        pieces = []
        empty = None
        for start in range(0, max(1, len(tokens.ids)), CHUNK_TOKENS):
            ids = tokens.ids[start:start + CHUNK_TOKENS]
            weights = [1.0, *tokens.weights[start:start + CHUNK_TOKENS]]  # BOS keeps its encoding
            z = self.encode_chunk(ids, device)
            if any(w != 1.0 for w in weights):
                empty = self.encode_chunk([], device) if empty is None else empty
                z = self.apply_weights(z, weights, empty)
            pieces.append(z)
        if len(pieces) < (chunks or 0):
            empty = self.encode_chunk([], device) if empty is None else empty
            pieces += [empty] * (chunks - len(pieces))
        return torch.cat(pieces, dim=1)

    def apply_weights(self, z: torch.Tensor, weights: list[float], empty: torch.Tensor) -> torch.Tensor:
        """Scale each token position's embedding by its weight (positions past the prompt keep weight 1)."""
        w = torch.ones(z.shape[1], dtype=torch.float32, device=z.device)
        w[:len(weights)] = torch.tensor(weights, dtype=torch.float32)
        w = w[None, :, None]
        if self.weighting == "comfy":  # positions of weight 1 stay bit-exact
            moved = (empty.float() + w * (z.float() - empty.float())).to(z.dtype)
            return torch.where(w == 1.0, z, moved)
        scaled = z.float() * w  # a1111
        return (scaled * (z.float().mean() / scaled.mean())).to(z.dtype)

    def encode_pair(self, prompt: str, negative_prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt and negative prompt with the same number of chunks (classifier-free guidance stacks them)."""
        chunks = max(self.tokenize(prompt).chunks, self.tokenize(negative_prompt).chunks)
        device = self.pipeline._execution_device
        return self.encode(prompt, chunks, device), self.encode(negative_prompt, chunks, device)
