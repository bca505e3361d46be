"""The evaluation protocol (configs/eval/prompts_<class>.yaml: prompts with `{name}`, seeds) applied to a sampling
config: one config renders every video a Table-1-style comparison needs."""

import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from magicme.errors import ConfigError

_NAME = re.compile(r"[A-Za-z0-9_\-]+")


def protocol_config(base: Path | str, protocol: Path | str, name: str) -> DictConfig:
    """`base` (a sampling config) with its prompts and seeds replaced by the protocol's, `{name}` filled in."""
    for key, path in (("--base", base), ("--protocol", protocol)):
        if not Path(path).is_file():
            raise ConfigError(f"{key}: {path} not found")
    if not _NAME.fullmatch(name):
        raise ConfigError(f"--name: {name!r} is not an embedding name (letters, digits, _ and - only)")
    spec = OmegaConf.load(protocol)
    prompts = list(spec.get("prompts") or [])
    if not prompts or not all(isinstance(p, str) and "{name}" in p for p in prompts):
        raise ConfigError(f"--protocol: {protocol} needs a 'prompts' list of strings, each containing {{name}}")
    config = OmegaConf.load(base)
    config.prompts = [p.replace("{name}", name) for p in prompts]
    config.seeds = list(spec.get("seeds") or config.get("seeds") or [42])
    return config
