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
    """A token embedding that returns `vectors[k]` wherever the input holds `ids[k]`, the frozen table elsewhere.

    SD-XL's two encoders share one (N, D1 + D2) parameter (`SDXLIdentity`): given a parameter and `columns`, this
    embedding uses its columns of it (one optimizer, one clipping norm and one checkpoint tensor for both)."""

    def __init__(self, base: nn.Embedding, ids: list[int], vectors: torch.Tensor, columns: slice | None = None):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.register_buffer("ids", torch.tensor(ids, device=base.weight.device), persistent=False)
        if columns is None:
            self.vectors = nn.Parameter(vectors.detach().to(base.weight.device, torch.float32).clone())
        else:
            self.vectors = vectors
        self.columns = columns

    def own_vectors(self) -> torch.Tensor:
        """(N, D) of this encoder."""
        return self.vectors if self.columns is None else self.vectors[:, self.columns]

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        frozen = self.base(input_ids)
        match = input_ids[..., None] == self.ids  # (B, L, N)
        which = match.to(torch.uint8).argmax(dim=-1)
        return torch.where(match.any(dim=-1, keepdim=True), self.own_vectors()[which].to(frozen.dtype), frozen)


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


def add_tokens(tokenizer, text_encoder, name: str, count: int, init: str) -> tuple[nn.Embedding, list[int],
                                                                                  torch.Tensor]:
    """Add the ID tokens to the tokenizer and rows for them to the text encoder; returns the resized embedding, the
    tokens' ids and their starting vectors."""
    tokens = token_names(name, count)
    if tokenizer.add_tokens(tokens) != count:
        raise ConfigError(f"name: tokens {tokens[0]}… already exist in the tokenizer; choose another name")
    vectors = initial_vectors(tokenizer, text_encoder.get_input_embeddings(), count, init)
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    return text_encoder.get_input_embeddings(), tokenizer.convert_tokens_to_ids(tokens), vectors


def add_identity_tokens(tokenizer, text_encoder, name: str, count: int, init: str) -> IdentityEmbedding:
    """Add the ID tokens to the tokenizer and splice trainable vectors for them into the text encoder."""
    base, ids, vectors = add_tokens(tokenizer, text_encoder, name, count, init)
    identity = IdentityEmbedding(base, ids, vectors)
    text_encoder.set_input_embeddings(identity)
    return identity


class SDXLIdentity(nn.Module):
    """SD-XL's identity: N tokens in each of its two tokenizers, one (N, D1 + D2) parameter `vectors` whose first
    D1 columns are the first encoder's rows and the rest the second's (`clip_l` and `clip_g` of the saved file)."""

    def __init__(self, parts: list[tuple[nn.Embedding, list[int], torch.Tensor]]):
        super().__init__()
        self.vectors = nn.Parameter(torch.cat([v.detach().float() for _, _, v in parts], dim=1)
                                    .to(parts[0][0].weight.device))
        edges = [0]
        for _, _, v in parts:
            edges.append(edges[-1] + v.shape[1])
        self.parts = nn.ModuleList(IdentityEmbedding(base, ids, self.vectors, slice(a, b))
                                   for (base, ids, _), a, b in zip(parts, edges, edges[1:]))


def add_sdxl_identity_tokens(tokenizers: list, text_encoders: list, name: str, count: int,
                             init: str) -> SDXLIdentity:
    """The ID tokens in both SD-XL tokenizers, each encoder's rows started from its own table (rare tokens or the
    `init` word), and the shared trainable vectors spliced into both encoders."""
    identity = SDXLIdentity([add_tokens(tokenizer, encoder, name, count, init)
                             for tokenizer, encoder in zip(tokenizers, text_encoders, strict=True)])
    for encoder, part in zip(text_encoders, identity.parts):
        encoder.set_input_embeddings(part)
    return identity


def bake_identity(text_encoder, identity: IdentityEmbedding) -> torch.Tensor:
    """Write the learned vectors into the vocabulary rows and put the plain embedding back; returns the vectors."""
    vectors = identity.own_vectors().detach().float().cpu()
    with torch.no_grad():
        identity.base.weight[identity.ids] = identity.own_vectors().to(identity.base.weight.dtype)
    text_encoder.set_input_embeddings(identity.base)
    return vectors
