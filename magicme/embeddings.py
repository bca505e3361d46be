"""ID embeddings: the few learned token vectors that carry one person's identity.

Files: the A1111/ComfyUI textual-inversion `.pt` (`{"string_to_param": {"*": Tensor[N, D]}}`, the format of the
published Magic-Me characters and of our `train.py`) and safetensors `{token: Tensor[N, D]}`. Stock diffusers
mis-reads the single-key A1111 dict, so we unwrap the tensor ourselves and hand it to `load_textual_inversion`.
SD-XL identities have vectors for each of its two text encoders: the A1111/ComfyUI SDXL file is a safetensors
`{"clip_l": Tensor[N, 768], "clip_g": Tensor[N, 1280]}` (`load_sdxl_embedding_file`, `save_sdxl_embedding`).

How prompts name an identity (`embedding:altman`, `<altman>`) is in `magicme/prompts.py`.
"""

from pathlib import Path

import torch
from magicme.checkpoint_io import load_checkpoint, save_torch
from magicme.errors import ConfigError
from magicme.prompts import referenced_names, token_for

EMBEDDING_SUFFIXES = (".pt", ".safetensors", ".bin")
SDXL_KEYS = ("clip_l", "clip_g")  # the A1111/ComfyUI SDXL embedding: one tensor per SD-XL text encoder


def find_embeddings(embeddings_dir: Path | str | None) -> dict[str, Path]:
    """Every embedding file in `embeddings_dir`, by file stem (`altman.pt` → `altman`).

    Two files of one stem (`ann.pt` and `ann.safetensors`) are an error: which one a prompt used would depend on
    the order of a directory listing. (Names differing only by case are reported by magicme/inspector.py when a
    prompt uses one of them.)
    """
    if embeddings_dir is None:
        return {}
    found: dict[str, Path] = {}
    for path in sorted(p for p in Path(embeddings_dir).iterdir() if p.suffix in EMBEDDING_SUFFIXES and p.is_file()):
        if path.stem in found:
            raise ConfigError(f"{path}: identity {path.stem!r} also has the file {found[path.stem].name}; remove one "
                              "of the two")
        found[path.stem] = path
    return found


def resolve_names(prompts: list[str], available: dict[str, Path], where: str = "prompts") -> dict[str, Path]:
    """Map every identity the prompts use to its file, or fail listing what is available."""
    needed: dict[str, Path] = {}
    for prompt in prompts:
        for name in referenced_names(prompt):
            if name not in available:
                listing = ", ".join(sorted(available)) or "none (set model.embeddings_dir to a folder of .pt files)"
                raise ConfigError(f"{where}: unknown identity {name!r} in {prompt!r}; available: {listing}")
            needed[name] = available[name]
    return needed


def read_class_word(path: Path | str) -> str | None:
    """The class word an embedding file stores (see `save_embedding`), or None; reads a safetensors header only, a
    `.pt` memory-mapped, so listing the identities of a grid costs no tensor reads."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from magicme.safetensors_header import safetensors_header

        word = safetensors_header(path).get("__metadata__", {}).get("class_word")
    else:
        data = load_checkpoint(path, "embedding file")
        word = data.get("class_word") if isinstance(data, dict) else None
    return word if isinstance(word, str) and word.strip() else None


def load_embedding_file(path: Path | str) -> torch.Tensor:
    """Read the (N, D) token vectors from an A1111/ComfyUI `.pt`, a diffusers `.bin` or a safetensors file."""
    path = Path(path)
    data = load_checkpoint(path, "embedding file")
    if isinstance(data, dict) and set(SDXL_KEYS) <= set(data):
        raise ConfigError(f"{path}: an SDXL embedding (clip_l, clip_g), but the base is SD1.5-family; use it with "
                          f"model.family: sdxl, or an embedding trained for SD1.5")
    if isinstance(data, dict) and "string_to_param" in data:  # A1111 / ComfyUI / Magic-Me
        params = data["string_to_param"]
        data = params.get("*", next(iter(params.values()), None)) if isinstance(params, dict) else params
    elif isinstance(data, dict) and len(data) == 1:  # diffusers: {token: tensor}
        data = next(iter(data.values()))
    if not isinstance(data, torch.Tensor):
        raise ConfigError(
            f"{path}: no embedding tensor found; expected {{'string_to_param': {{'*': Tensor[N, D]}}}} "
            "or a safetensors file with one tensor"
        )
    if data.ndim == 1:
        data = data[None]
    if data.ndim != 2:
        raise ConfigError(f"{path}: embedding has shape {tuple(data.shape)}; expected (tokens, width)")
    return data.float()


def check_width(name: str, path: Path, vectors: torch.Tensor, width: int) -> None:
    """An embedding trained for another text encoder (e.g. SDXL's 1280-wide one) cannot be used with this base."""
    if vectors.shape[1] != width:
        raise ConfigError(
            f"{path}: identity {name!r} has vectors of width {vectors.shape[1]}, but the base model's text encoder "
            f"expects {width}; use an embedding trained for this base family"
        )


def load_into_pipeline(pipe, embeddings: dict[str, Path]) -> None:
    """Register every identity as token `<name>` in the pipeline's tokenizer and text encoder."""
    width = pipe.text_encoder.get_input_embeddings().weight.shape[1]
    for name, path in embeddings.items():
        vectors = load_embedding_file(path)
        check_width(name, path, vectors, width)
        token = token_for(name)
        if token in pipe.tokenizer.get_vocab():
            continue
        pipe.load_textual_inversion(vectors, token=token)


def _vectors(path: Path, key: str, value) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.ndim not in (1, 2) or value.numel() == 0:
        raise ConfigError(f"{path}: {key} is not a (tokens, width) tensor; re-train or re-download the embedding")
    return (value[None] if value.ndim == 1 else value).float()


def load_sdxl_embedding_file(path: Path | str) -> tuple[torch.Tensor, torch.Tensor]:
    """The (N, D1) `clip_l` and (N, D2) `clip_g` vectors of an A1111/ComfyUI SDXL embedding; an SD1.5 embedding
    (one tensor) is an error naming the file."""
    path = Path(path)
    data = load_checkpoint(path, "embedding file")
    if not (isinstance(data, dict) and set(SDXL_KEYS) <= set(data)):
        raise ConfigError(f"{path}: not an SDXL embedding (no clip_l and clip_g tensors; an SD1.5 embedding?); use "
                          f"an embedding trained for SDXL, or this one with an SD1.5 base")
    clip_l, clip_g = (_vectors(path, key, data[key]) for key in SDXL_KEYS)
    if clip_l.shape[0] != clip_g.shape[0]:
        raise ConfigError(f"{path}: clip_l has {clip_l.shape[0]} tokens but clip_g {clip_g.shape[0]}; the file is "
                          f"damaged, re-train or re-download it")
    return clip_l, clip_g


def load_into_sdxl_pipeline(pipe, embeddings: dict[str, Path]) -> None:
    """Register every SDXL identity as token `<name>` in both tokenizers and text encoders: `clip_l` into the first
    (CLIP ViT-L), `clip_g` into the second (OpenCLIP bigG), with diffusers' `load_textual_inversion` per encoder."""
    pairs = ((pipe.text_encoder, pipe.tokenizer), (pipe.text_encoder_2, pipe.tokenizer_2))
    for name, path in embeddings.items():
        token = token_for(name)
        for vectors, (encoder, tokenizer) in zip(load_sdxl_embedding_file(path), pairs, strict=True):
            check_width(name, path, vectors, encoder.get_input_embeddings().weight.shape[1])
            if token not in tokenizer.get_vocab():
                pipe.load_textual_inversion(vectors, token=token, text_encoder=encoder, tokenizer=tokenizer)


def save_sdxl_embedding(path: Path | str, clip_l: torch.Tensor, clip_g: torch.Tensor,
                        class_word: str | None = None) -> Path:
    """Write an SDXL identity as A1111/ComfyUI read it: safetensors `{clip_l, clip_g}`, class word in the metadata."""
    from safetensors.torch import save_file

    from magicme.video_io import atomic_path

    path = Path(path)
    tensors = {key: v.detach().to("cpu", torch.float32).contiguous() for key, v in zip(SDXL_KEYS, (clip_l, clip_g))}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"class_word": class_word} if class_word else None)
    return path


def save_embedding(path: Path | str, vectors: torch.Tensor, name: str, class_word: str | None = None) -> None:
    """Write `vectors` (N, D) in the A1111/ComfyUI layout (`.pt`) or as safetensors `{<name>: tensor}`.

    `class_word` (the identity's class, "man"/"woman") is stored beside the vectors (`.pt`: key `class_word`;
    safetensors: metadata `class_word`), so prompt templates can fill `{id}` without a hand-written map; other
    tools ignore it.
    """
    from safetensors.torch import save_file

    from magicme.video_io import atomic_path

    path = Path(path)
    tensor = vectors.detach().to("cpu", torch.float32).contiguous()
    if path.suffix != ".safetensors":
        extra = {"class_word": class_word} if class_word else {}
        save_torch({"string_to_param": {"*": tensor}, "name": name, **extra}, path)
        return
    with atomic_path(path) as tmp:
        save_file({f"<{name}>": tensor}, str(tmp), metadata={"class_word": class_word} if class_word else None)
