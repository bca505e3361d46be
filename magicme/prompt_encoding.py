"""Prompts → text-encoder conditioning as ComfyUI and A1111 compute it: weighted spans, prompts longer than the
75 tokens CLIP reads at once, and a prompt and negative prompt of different lengths.

A prompt is parsed into (text, weight) spans (magicme/prompt_weights.py), identity references become their N
tokens, and the tokens are cut into chunks of at most 75 by `split_chunks`, with the rule of the tool whose
weighting is chosen (docs/prompts.md):

- `comfy` (and `none`): ComfyUI's `tokenize_with_weights` — each space-separated word is tokenized on its own; a
  word that does not fit in the current chunk moves whole to the next one, and the chunk it leaves is closed and
  padded; a word of `MAX_WORD_TOKENS` or more tokens (or an identity of that many vectors) is split at the boundary
  instead.
- `a1111`: A1111's `tokenize_line` — token by token; when a chunk is full and its last comma is at most
  `COMMA_BACKTRACK` tokens back, the tokens after that comma move to the next chunk; an identity's vectors never
  straddle two chunks.

Each chunk is encoded on its own as BOS + tokens + EOS (padded to 77) and the chunks are concatenated along the
token axis. Weights then scale each token's embedding:

- `comfy`: z ← z_empty + w · (z − z_empty) at every token of weight w ≠ 1, against the encoding of the empty prompt
  (ComfyUI's SD1 clip);
- `a1111`: z ← z · w, then rescaled so the chunk's mean is unchanged (A1111's `EmphasisOriginal`);
- `none`: the text goes to CLIP as written.

Guidance stacks the prompt's and the negative prompt's conditionings, which must then have one length: the shorter
is *repeated* up to the least common multiple of the two chunk counts (`repeat_to`), as ComfyUI's `CONDCrossAttn`
does. Repeating every key and value k times leaves cross-attention's output unchanged, so this is also what A1111
computes by default (`pad_cond_uncond` off: the two are denoised in separate passes, each at its own length).

A prompt without weights (or with weight 1.0 everywhere) of at most 75 tokens gives exactly the tensor diffusers'
own `encode_prompt` gives: same ids, same single encoder call.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from magicme.errors import ConfigError
from magicme.prompt_weights import parse_weighted
from magicme.prompts import split_references

CHUNK_TOKENS = 75  # CLIP's 77 positions less BOS and EOS
MAX_CHUNKS = 8  # 600 tokens: longer is surely a mistake (a pasted file), not a prompt
MAX_WORD_TOKENS = 8  # ComfyUI's max_word_length: a word this long may be split at a chunk boundary
COMMA_BACKTRACK = 20  # A1111's comma_padding_backtrack (its default)
RULES = {"comfy": "comfy", "none": "comfy", "a1111": "a1111"}  # weighting → chunking rule


@dataclass(frozen=True)
class Word:
    """Tokens chunking keeps together where it can: a space-separated word (comfy), one token (a1111), or an
    identity's vectors (both)."""

    ids: tuple[int, ...]
    weight: float
    identity: bool = False


@dataclass
class Chunk:
    """At most CHUNK_TOKENS ids (without BOS/EOS) and their weights."""

    ids: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)

    def add(self, ids: Sequence[int], weight: float) -> None:
        self.ids += ids
        self.weights += [weight] * len(ids)


def _comfy_chunks(words: Sequence[Word]) -> list[Chunk]:
    """ComfyUI's `tokenize_with_weights`: a word that does not fit closes the chunk and starts the next one, unless
    it has MAX_WORD_TOKENS or more tokens: then it fills the chunk and goes on in the next."""
    chunks = [Chunk()]
    for word in words:
        ids = list(word.ids)
        while ids:
            room = CHUNK_TOKENS - len(chunks[-1].ids)
            if len(ids) <= room:
                chunks[-1].add(ids, word.weight)
                ids = []
            else:
                if len(ids) >= MAX_WORD_TOKENS:  # a long word fills the chunk and goes on in the next one
                    chunks[-1].add(ids[:room], word.weight)
                    ids = ids[room:]
                chunks.append(Chunk())
    return chunks


def _a1111_chunks(words: Sequence[Word], comma: int | None) -> list[Chunk]:
    """A1111's `tokenize_line`: token by token; a full chunk whose last comma is at most COMMA_BACKTRACK tokens back
    hands the tokens after it to the next chunk; an identity that does not fit starts the next chunk."""
    chunks, current, last_comma = [], Chunk(), -1

    def close() -> None:
        nonlocal current, last_comma
        chunks.append(current)
        current, last_comma = Chunk(), -1

    for word in words:
        if not word.identity and word.ids[0] == comma:
            last_comma = len(current.ids)
        elif len(current.ids) == CHUNK_TOKENS and last_comma != -1 and CHUNK_TOKENS - last_comma <= COMMA_BACKTRACK:
            moved = Chunk(current.ids[last_comma + 1:], current.weights[last_comma + 1:])
            del current.ids[last_comma + 1:], current.weights[last_comma + 1:]
            close()
            current = moved
        if len(current.ids) == CHUNK_TOKENS or len(current.ids) + len(word.ids) > CHUNK_TOKENS:
            close()
        current.add(word.ids, word.weight)
    if current.ids or not chunks:
        close()
    return chunks


def split_chunks(words: Sequence[Word], rule: str = "comfy", comma: int | None = None) -> list[Chunk]:
    """A prompt's words cut into chunks of at most CHUNK_TOKENS tokens, by ComfyUI's rule (`comfy`) or A1111's
    (`a1111`, which needs the tokenizer's `comma` id); always at least one chunk (the empty prompt's)."""
    if rule == "comfy":
        return _comfy_chunks(words)
    if rule == "a1111":
        return _a1111_chunks(words, comma)
    raise ValueError(f"unknown chunking rule {rule!r}; expected comfy or a1111")


def common_chunks(*counts: int) -> int:
    """The chunk count conditionings of these chunk counts are repeated to: their least common multiple."""
    return math.lcm(*counts)


def repeat_to(z: torch.Tensor, chunks: int) -> torch.Tensor:
    """(B, 77 · n, D) repeated whole along the token axis to (B, 77 · chunks, D); `chunks` is a multiple of n."""
    n = z.shape[1] // (CHUNK_TOKENS + 2)
    if chunks % n:
        raise ValueError(f"cannot repeat {n} chunks to {chunks}")
    return z if chunks == n else z.repeat(1, chunks // n, 1)


@dataclass
class TokenizedPrompt:
    words: list[Word]
    chunks: list[Chunk]

    @property
    def ids(self) -> list[int]:  # without BOS/EOS, identity tokens expanded
        return [i for word in self.words for i in word.ids]

    @property
    def weights(self) -> list[float]:  # one per id
        return [word.weight for word in self.words for _ in word.ids]


class PromptEncoder:
    """Encodes prompts with a diffusers pipeline's tokenizer and text encoder (and its loaded identities).

    `tokenizer` / `text_encoder` select another pair of the pipeline's (SD-XL's second), and `hidden_layer` a
    hidden state instead of the last one (SD-XL reads the penultimate, -2)."""

    def __init__(self, pipeline, weighting: str = "comfy", tokenizer=None, text_encoder=None,
                 hidden_layer: int | None = None):
        self.pipeline, self.weighting = pipeline, weighting
        self._tokenizer, self._text_encoder, self.hidden_layer = tokenizer, text_encoder, hidden_layer
        self._vocab = None

    @property
    def tokenizer(self):
        return self._tokenizer if self._tokenizer is not None else self.pipeline.tokenizer

    @property
    def text_encoder(self):
        return self._text_encoder if self._text_encoder is not None else self.pipeline.text_encoder

    @property
    def vocab(self) -> dict[str, int]:
        """The tokenizer's vocabulary, read once per tokenizer (words ending in `</w>` never change)."""
        if self._vocab is None or self._vocab[0] is not self.tokenizer:
            self._vocab = (self.tokenizer, self.tokenizer.get_vocab())
        return self._vocab[1]

    @property
    def rule(self) -> str:
        """How prompts are cut into chunks: `comfy` or `a1111` (`none` chunks as ComfyUI does)."""
        return RULES[self.weighting]

    def _ids(self, text: str, identity: bool) -> list[int]:
        """Token ids of one piece of text; an identity's placeholder becomes its N tokens (diffusers' textual
        inversion). A comfy word that is itself in the vocabulary is that one token, as ComfyUI looks it up."""
        if not identity and self.rule == "comfy":
            exact = self.vocab.get(f"{text}</w>")
            if exact is not None:
                return [exact]
        text = self.pipeline.maybe_convert_prompt(text, self.tokenizer)
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def words(self, prompt: str) -> list[Word]:
        """The prompt's words, each with its weight: `comfy` / `none` split each weighted span at spaces (and
        around identity references) and tokenize each word on its own, as ComfyUI does; `a1111` tokenizes each span
        whole and makes each token a word, as A1111 does. Identities are one word of their N vectors."""
        words = []
        for text, weight in parse_weighted(prompt, self.weighting):
            pieces = text.replace("\n", " ").split(" ") if self.rule == "comfy" else [text]
            for piece, identity in (part for word in pieces for part in split_references(word)):
                ids = self._ids(piece, identity)
                if identity or self.rule == "comfy":
                    words += [Word(tuple(ids), weight, identity)] if ids else []
                else:
                    words += [Word((i,), weight) for i in ids]
        return words

    def tokenize(self, prompt: str) -> TokenizedPrompt:
        """The prompt's words and its chunks (`split_chunks` by this encoder's rule)."""
        words = self.words(prompt)
        comma = self.vocab.get(",</w>") if self.rule == "a1111" else None
        return TokenizedPrompt(words, split_chunks(words, self.rule, comma))

    def chunks(self, *texts: str) -> int:
        """The chunk count conditionings of `texts` share: the least common multiple of theirs."""
        return common_chunks(*(len(self.tokenize(text).chunks) for text in texts))

    def count(self, prompt: str) -> int:
        """Tokens of a prompt as the text encoder reads it (without BOS/EOS)."""
        return len(self.tokenize(prompt).ids)

    def check_length(self, prompt: str, where: str) -> int:
        """The prompt's token count; a `ConfigError` naming `where` when it needs more than MAX_CHUNKS chunks."""
        tokens = self.tokenize(prompt)
        if len(tokens.chunks) > MAX_CHUNKS:
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
        """(1, 77 · n, D) conditioning of `prompt`'s n chunks, repeated whole to `chunks` when given (a multiple of
        n: `common_chunks`). The empty chunk is encoded only when a weight needs it. `device`: the pipeline's
        execution device, which diffusers finds by walking every module (milliseconds a call), so callers look it
        up once."""
        device = device or self.pipeline._execution_device
        pieces = []
        empty = None
        for chunk in self.tokenize(prompt).chunks:
            weights = [1.0, *chunk.weights]  # BOS keeps its encoding
            z = self.encode_chunk(chunk.ids, device)
            if any(w != 1.0 for w in weights):
                empty = self.encode_chunk([], device) if empty is None else empty
                z = self.apply_weights(z, weights, empty)
            pieces.append(z)
        z = torch.cat(pieces, dim=1)
        return z if chunks is None else repeat_to(z, chunks)

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
        """Prompt and negative prompt, the shorter repeated to the least common multiple of their chunk counts
        (classifier-free guidance stacks them; the repeat leaves cross-attention unchanged)."""
        device = self.pipeline._execution_device
        positive, negative = self.encode(prompt, device=device), self.encode(negative_prompt, device=device)
        chunks = common_chunks(positive.shape[1] // (CHUNK_TOKENS + 2), negative.shape[1] // (CHUNK_TOKENS + 2))
        return repeat_to(positive, chunks), repeat_to(negative, chunks)
