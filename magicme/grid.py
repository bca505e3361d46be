"""Grids of identities: one config renders every prompt × seed for each identity it lists.

`identities: [ann, bob]` (or `all`: every embedding file in `model.embeddings_dir`) fills the placeholder `{id}`
(magicme.prompts.ID_PLACEHOLDER, the one training captions and the evaluation protocol use) of every prompt with
`embedding:NAME <class word>`. The class word comes from `class_words: {ann: woman}` in the config, else from the
embedding file (`save_embedding` stores it; a safetensors header or a memory-mapped `.pt` is all that is read).
With `identities: null` (the default) prompts name their identities themselves and `{id}` is an error.

Import-light: the embedding files are only opened (lazily importing torch for `.pt`) once every cheap check passed.
"""

import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from magicme.errors import ConfigError
from magicme.prompts import ID_PLACEHOLDER, Prompt, fill_identity, keyframes

ALL = "all"
_NAME = re.compile(r"[A-Za-z0-9_\-]+")
_WORD = re.compile(r"\w[\w '\-]*")  # plain words: nothing the prompt-weighting or identity syntax would read


def placeholder_problem(text: str, key: str, identities: bool, required: bool) -> str | None:
    """A prompt text's `{id}` against the `identities:` setting: required in prompts of a grid (a prompt without it
    would render the same video for every identity), meaningless without one."""
    if identities and required and ID_PLACEHOLDER not in text:
        return (f"{key}: {text[:60]!r} has no {ID_PLACEHOLDER}; with identities set, every prompt names its identity "
                f"as {ID_PLACEHOLDER} (filled with embedding:NAME and its class word)")
    if not identities and ID_PLACEHOLDER in text:
        return (f"{key}: {ID_PLACEHOLDER} is filled only for a grid; set identities: [NAME, ...] (or all), or write "
                "embedding:NAME in the prompt")
    return None


def requested_names(identities, available: dict[str, Path], embeddings_dir) -> list[str]:
    """The identity names a config asks for, in its order (`all`: every file, sorted), each with a file."""
    if isinstance(identities, str) and identities == ALL:
        names = sorted(available)
    elif OmegaConf.is_list(identities) or isinstance(identities, list):
        names = list(identities)
    else:
        raise ConfigError(f"identities: {identities!r} must be a list of names ([ann, bob]), all, or null")
    bad = [n for n in names if not (isinstance(n, str) and _NAME.fullmatch(n))]
    if bad:
        raise ConfigError(f"identities: {bad[0]!r} is not an identity name (letters, digits, _ and -: an embedding "
                          "file's stem)")
    if not names:
        raise ConfigError(f"identities: no identities{' in ' + str(embeddings_dir) if identities == ALL else ''}; "
                          "list names, add embedding files, or set identities: null")
    if len(set(names)) != len(names):
        raise ConfigError(f"identities: {names} lists an identity twice; list each once")
    missing = [n for n in names if n not in available]
    if missing:
        listing = ", ".join(sorted(available)) or "none"
        raise ConfigError(f"identities: {missing[0]!r} has no embedding file in {embeddings_dir}; available: "
                          f"{listing}")
    return names


def resolve_identities(cfg: DictConfig) -> dict[str, str] | None:
    """{name: class word} of the grid's identities in grid order, or None without `identities:`."""
    for name, word in cfg.class_words.items():
        if not isinstance(word, str):
            value = OmegaConf.to_container(word) if OmegaConf.is_config(word) else word
            raise ConfigError(f"class_words.{name}: {value!r} is not a class word; write class_words: {{{name}: "
                              "woman}} (or man, person, ...)")
    if cfg.identities is None:
        if cfg.class_words:
            raise ConfigError("class_words: only used with identities; set identities or remove class_words")
        return None
    folder = cfg.model.embeddings_dir
    if folder is None or not Path(folder).is_dir():
        raise ConfigError(f"model.embeddings_dir: {folder} is not a folder; identities are embedding files there")
    from magicme.embeddings import find_embeddings, read_class_word  # imports torch: only for a grid

    available = find_embeddings(folder)
    names = requested_names(cfg.identities, available, folder)
    extra = sorted(set(cfg.class_words) - set(names))
    if extra:
        raise ConfigError(f"class_words: {extra[0]!r} is not one of the identities ({', '.join(names)}); remove it")
    words = {}
    for name in names:
        word = cfg.class_words.get(name) or read_class_word(available[name])
        if word is None:
            raise ConfigError(f"identities: {name!r} has no class word ({available[name]} stores none); add "
                              f"class_words: {{{name}: man}} (or woman, person, ...) to the config")
        if not _WORD.fullmatch(word.strip()):
            raise ConfigError(f"class_words.{name}: {word!r} must be plain words (letters, digits, spaces, - and ')")
        words[name] = word.strip()
    return words


def identity_text(name: str, class_word: str) -> str:
    """What `{id}` becomes: the identity's token and its class word, as the embeddings were trained with."""
    return f"embedding:{name} {class_word}"


def fill_prompt(prompt: Prompt, name: str | None, class_word: str | None) -> Prompt:
    """A prompt (every keyframe of a travelling one) with `{id}` filled; unchanged without an identity."""
    if name is None:
        return prompt
    filled = {frame: fill_identity(text, identity_text(name, class_word)) for frame, text in keyframes(prompt).items()}
    return filled[0] if isinstance(prompt, str) else filled
