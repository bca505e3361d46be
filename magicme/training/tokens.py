"""The identity's tokens: N new words in the tokenizer whose input-embedding vectors are the only trained weights.

The vectors live in `IdentityEmbedding.vectors`, an (N, D) parameter spliced into the text encoder's token
embedding at the new ids; the frozen vocabulary matrix is never touched, so every other row stays bit-identical by
construction, the optimizer state is N×D (not 49k×768), and gradient clipping sees only the identity.
"""

import copy

import torch
from torch import nn

from magicme.errors import ConfigError

# The original's initialisation: CLIP token ids of rare BPE pieces (`ktn`, `pll</w>`, `ucd</w>`, `ucd</w>`).
RARE_TOKEN_IDS = (42170, 47629, 43514, 43514)


def token_names(name: str, count: int) -> list[str]:
    """`<ann>`, `<ann>_1`, …: the names diffusers expands `<ann>` into when the embedding is loaded for sampling."""
    return [f"<{name}>"] + [f"<{name}>_{i}" for i in range(1, count)]


def initial_vectors(tokenizer, embedding: nn.Embedding, count: int, init: str) -> torch.Tensor:
    """(count, D) starting vectors: the original's rare tokens (`init: rare`), or the mean embedding of a word."""
    weight = embedding.weight.detach()
    if init == "rare":
        if max(RARE_TOKEN_IDS) >= embedding.num_embeddings:  # checked from the config files first; this for Hub ids
            raise ConfigError(f"init: the original's rare-token ids need the CLIP vocabulary (49408 tokens); this "
                              f"text encoder has {embedding.num_embeddings}; set init to a word such as the class word")
        return weight[[RARE_TOKEN_IDS[i % len(RARE_TOKEN_IDS)] for i in range(count)]].clone()
    word_ids = tokenizer(init, add_special_tokens=False).input_ids
    if not word_ids:
        raise ConfigError(f"init: {init!r} gives no tokens; use 'rare' or a word")
    return weight[word_ids].mean(dim=0, keepdim=True).repeat(count, 1)


class IdentityEmbedding(nn.Module):
    """A token embedding that returns `vectors[k]` wherever the input holds `ids[k]`, the frozen table elsewhere."""

    def __init__(self, base: nn.Embedding, ids: list[int], vectors: torch.Tensor):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.register_buffer("ids", torch.tensor(ids, device=base.weight.device), persistent=False)
        self.vectors = nn.Parameter(vectors.detach().to(base.weight.device, torch.float32).clone())

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        frozen = self.base(input_ids)
        match = input_ids[..., None] == self.ids  # (B, L, N)
        which = match.to(torch.uint8).argmax(dim=-1)
        return torch.where(match.any(dim=-1, keepdim=True), self.vectors[which].to(frozen.dtype), frozen)


class Vocabulary:
    """The base's tokenizer and token embedding as loaded. Identities trained one after another in one process all
    start from it: `fresh()` puts a copy of the loaded embedding into the text encoder and returns a copy of the
    loaded tokenizer, neither holding the previous identity's tokens. Copies, because resizing the embedding for new
    tokens swaps the weight inside the module it was given (transformers keeps the module's type that way)."""

    def __init__(self, tokenizer, text_encoder):
        self.tokenizer = copy.deepcopy(tokenizer)
        self.embedding = copy.deepcopy(text_encoder.get_input_embeddings())
        self.text_encoder = text_encoder

    def fresh(self):
        self.text_encoder.set_input_embeddings(copy.deepcopy(self.embedding))
        self.text_encoder.config.vocab_size = self.embedding.num_embeddings
        return copy.deepcopy(self.tokenizer)


def add_identity_tokens(tokenizer, text_encoder, name: str, count: int, init: str) -> IdentityEmbedding:
    """Add the ID tokens to the tokenizer and splice trainable vectors for them into the text encoder."""
    tokens = token_names(name, count)
    if tokenizer.add_tokens(tokens) != count:
        raise ConfigError(f"name: tokens {tokens[0]}… already exist in the tokenizer; choose another name")
    base = text_encoder.get_input_embeddings()
    vectors = initial_vectors(tokenizer, base, count, init)
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    base = text_encoder.get_input_embeddings()
    identity = IdentityEmbedding(base, tokenizer.convert_tokens_to_ids(tokens), vectors)
    text_encoder.set_input_embeddings(identity)
    return identity


def bake_identity(text_encoder, identity: IdentityEmbedding) -> torch.Tensor:
    """Write the learned vectors into the vocabulary rows and put the plain embedding back; returns the vectors."""
    vectors = identity.vectors.detach().float().cpu()
    with torch.no_grad():
        identity.base.weight[identity.ids] = identity.vectors.to(identity.base.weight.dtype)
    text_encoder.set_input_embeddings(identity.base)
    return vectors
