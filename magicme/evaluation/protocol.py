"""The evaluation protocol (configs/eval/prompts_<class>.yaml: a class word, prompts with `{id}`, seeds) applied to
a sampling config: one config renders every video a Table-1-style comparison needs."""

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from magicme.configfile import describe_omegaconf_error, load_structured, read_yaml_mapping
from magicme.prompts import ID_PLACEHOLDER, fill_identity
from magicme.errors import ConfigError

_NAME = re.compile(r"[A-Za-z0-9_\-]+")
OLD_PLACEHOLDER = "{name}"  # protocols before the project-wide `{id}`: `embedding:{name} woman`


@dataclass
class Protocol:
    class_word: str = MISSING  # what `{id}` says besides the identity: `woman` → `embedding:ann woman`
    prompts: list[str] = MISSING  # each with `{id}` once or more
    seeds: Optional[list[int]] = None  # None: the base config's seeds


def load_protocol(path: Path | str) -> Protocol:
    """A protocol file, checked: a class word, and prompts that all use the `{id}` placeholder."""
    spec = load_structured(Protocol, path, flag="--protocol")
    if OmegaConf.is_missing(spec, "class_word") or not spec.class_word.strip():
        raise ConfigError(f"{path}: no class_word; add e.g. `class_word: woman` (the word {ID_PLACEHOLDER} adds "
                          f"after the identity)")
    prompts = [] if OmegaConf.is_missing(spec, "prompts") else list(spec.prompts)
    if not prompts:
        raise ConfigError(f"{path}: no prompts; add a `prompts:` list of strings, each containing {ID_PLACEHOLDER}")
    for number, prompt in enumerate(prompts, start=1):
        if OLD_PLACEHOLDER in prompt:
            raise ConfigError(f"{path}: prompt {number} uses the old {OLD_PLACEHOLDER} placeholder; write "
                              f"{ID_PLACEHOLDER} for `embedding:<name> <class_word>` (e.g. `a photo of "
                              f"{ID_PLACEHOLDER} walking` with `class_word: woman`)")
        if ID_PLACEHOLDER not in prompt:
            raise ConfigError(f"{path}: prompt {number} ({prompt!r}) has no {ID_PLACEHOLDER}; put {ID_PLACEHOLDER} "
                              f"where the identity goes")
    return Protocol(spec.class_word.strip(), prompts, None if spec.seeds is None else list(spec.seeds))


def load_base(path: Path | str) -> DictConfig:
    """The sampling config as written (its own keys only, interpolations kept) after checking that it parses and
    every `${...}` in it resolves; sample.py checks its keys and values when it runs the result."""
    config = read_yaml_mapping(path, "--base")
    try:
        OmegaConf.to_container(config, resolve=True)
    except OmegaConfBaseException as err:
        raise ConfigError(describe_omegaconf_error(err, str(path))) from err
    return config


def protocol_config(base: Path | str, protocol: Path | str, name: str) -> DictConfig:
    """`base` with its prompts and seeds replaced by the protocol's, `{id}` → `embedding:<name> <class_word>`."""
    if not _NAME.fullmatch(name):
        raise ConfigError(f"--name: {name!r} is not an embedding name (letters, digits, _ and - only)")
    spec = load_protocol(protocol)
    config = load_base(base)
    identity = f"embedding:{name} {spec.class_word}"
    config.prompts = [fill_identity(p, identity) for p in spec.prompts]
    config.seeds = spec.seeds or list(config.get("seeds") or [42])
    return config
