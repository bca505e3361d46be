"""Reading a YAML config with `key=value` overrides into a typed schema: the one loader every CLI uses.

Import-light on purpose (OmegaConf and PyYAML only, no torch or diffusers): a typo in a config is reported in a
fraction of a second, before anything heavy is imported. Every way a config file can be malformed — not YAML, a
list instead of a mapping, a broken override such as `seeds=[1,2`, an unknown key, a wrong type, an interpolation
such as `${nope}` that does not resolve — becomes one `ConfigError` naming the key or the file.
"""

import copy
from collections.abc import Callable
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from magicme.errors import ConfigError


def describe_omegaconf_error(err: Exception, where: str) -> str:
    """One line `<key>: <problem> (in <where>)`, instead of OmegaConf's multi-line report."""
    key = getattr(err, "full_key", None) or "config"
    message = str(err).splitlines()[0] if str(err) else type(err).__name__
    return f"{key}: {message} (in {where})"


def read_yaml_mapping(path: Path | str, flag: str = "--config") -> DictConfig:
    """A YAML file whose top level is a mapping (an empty file is an empty mapping)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{flag}: {path} not found; give the path of a YAML config file")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        first = str(err).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML ({first}); fix the file (the example configs under configs/ "
                          "show the format)") from err
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level is a {type(data).__name__}, not a mapping of keys; write "
                          "`key: value` lines (the example configs under configs/ show the format)")
    try:
        return OmegaConf.create(data)
    except OmegaConfBaseException as err:
        raise ConfigError(describe_omegaconf_error(err, str(path))) from err


def parse_overrides(overrides: list[str] | None) -> DictConfig:
    """`key=value` command-line overrides in OmegaConf dot-list syntax, each checked on its own."""
    layer = OmegaConf.create()
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"{item}: an override must be key=value (e.g. steps=4)")
        try:
            layer = OmegaConf.merge(layer, OmegaConf.from_dotlist([item]))
        except (OmegaConfBaseException, yaml.YAMLError, ValueError) as err:
            raise ConfigError(f"{item.split('=', 1)[0]}: cannot parse the override {item!r} "
                              f"({str(err).splitlines()[0]}); check brackets and quotes, e.g. seeds=[1,2]") from err
    return layer


def load_structured(schema: type | DictConfig, path: Path | str | None, overrides: list[str] | dict | None = None,
                    flag: str = "--config", normalise: Callable[[DictConfig], None] | None = None,
                    relax: Callable[[DictConfig], None] | None = None) -> DictConfig:
    """Defaults of `schema` (a dataclass, or a structured DictConfig) ← YAML file ← overrides, type-checked,
    interpolations resolved now. `normalise(layer)` may rewrite a user layer in place before it is merged (e.g. a
    shorthand string for a block); `relax(cfg)` may open free-form nodes of the config merged so far (a block a
    previous layer created) to new keys."""
    def fresh() -> DictConfig:
        return copy.deepcopy(schema) if isinstance(schema, DictConfig) else OmegaConf.structured(schema)

    layers: list[tuple[str, DictConfig]] = []
    if path is not None:
        layers.append((str(path), read_yaml_mapping(path, flag)))
    if isinstance(overrides, dict):
        layers.append(("command line", OmegaConf.create({k: v for k, v in overrides.items() if v is not None})))
    else:
        layers.append(("command line", parse_overrides(overrides)))
    cfg, where = fresh(), "config"
    try:
        for where, layer in layers:  # one layer at a time, so an error names the file or the command line
            if normalise is not None:
                normalise(layer)
            if relax is not None:
                relax(cfg)
            cfg = OmegaConf.merge(cfg, layer)
        where = " + ".join(w for w, _ in layers)
        # resolve `${...}` interpolations now, so a broken one is reported here, not when some key is first read
        resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
        return OmegaConf.merge(fresh(), resolved)
    except OmegaConfBaseException as err:
        raise ConfigError(describe_omegaconf_error(err, where)) from err

