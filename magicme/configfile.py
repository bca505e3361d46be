"""Reading a YAML config with `key=value` overrides into a typed schema: the one loader every CLI uses.

Import-light on purpose (OmegaConf and PyYAML only, no torch or diffusers): a typo in a config is reported in a
fraction of a second, before anything heavy is imported. Every way a config file can be malformed — not YAML, a
list instead of a mapping, a broken override such as `seeds=[1,2`, an unknown key, a wrong type, an interpolation
such as `${nope}` that does not resolve — becomes one `ConfigError` naming the key or the file.

Reading is bounded before OmegaConf sees the data: a file of more than MAX_CONFIG_BYTES, more than MAX_VALUES values
once YAML aliases are expanded (`&a` / `*a` nested ten deep is billions: OmegaConf would copy every one), nesting
deeper than MAX_DEPTH or an alias that contains itself is one `ConfigError` in milliseconds. Every number of the
merged config must be finite (`.nan`, `.inf`, `1e309` are refused, naming the key).
"""

import copy
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from magicme.errors import ConfigError


MAX_CONFIG_BYTES = 1_000_000  # a config file (the largest example is a few kB)
MAX_VALUES = 100_000  # values and containers, aliases expanded
MAX_DEPTH = 32  # nesting of mappings and lists


def size_problem(data: Any) -> str | None:
    """Why `data` (parsed YAML, aliases still shared) is too big or deep to expand, or None. Counts each shared node
    once per use, memoised by identity, so the count of a billion-value alias bomb takes microseconds."""
    memo: dict[int, tuple[int, int]] = {}
    active: set[int] = set()

    def measure(node: Any) -> tuple[int, int]:  # (values, depth) of node expanded
        if not isinstance(node, (dict, list)):
            return 1, 0
        if id(node) in active:
            raise RecursionError
        if id(node) not in memo:
            active.add(id(node))
            children = [measure(child) for child in (list(node.keys()) + list(node.values()) if isinstance(node, dict)
                                                     else node)]
            active.discard(id(node))
            memo[id(node)] = (1 + sum(c[0] for c in children), 1 + max((c[1] for c in children), default=0))
        return memo[id(node)]

    try:
        values, depth = measure(data)
    except RecursionError:  # a cycle (depth itself is bounded by `too_deep` first)
        return "an alias (*name) refers to the list or mapping that contains it; write the values out"
    if values > MAX_VALUES:
        return (f"{values:,} values once its aliases (*name) are expanded, more than {MAX_VALUES:,}; write the "
                "values out instead of nesting aliases")
    if depth > MAX_DEPTH:
        return f"nested {depth} levels deep, more than {MAX_DEPTH}; flatten it"
    return None


def too_deep(text: str) -> bool:
    """Whether YAML text nests deeper than MAX_DEPTH, read as an event stream (iterative, stops at the first level
    too deep): PyYAML's own loader recurses once per level and takes seconds to fail on ten thousand."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                return True
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            depth -= 1
    return False


def non_finite_key(node: Any, key: str = "") -> str | None:
    """The key of the first NaN or infinite number in a plain container, or None."""
    if isinstance(node, float) and not math.isfinite(node):
        return key or "config"
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, child in items:
        found = non_finite_key(child, f"{key}[{k}]" if isinstance(node, list) else f"{key}.{k}" if key else str(k))
        if found is not None:
            return found
    return None


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
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: {size:,} bytes, more than a config's {MAX_CONFIG_BYTES:,}; is this the right "
                          "file?")
    try:
        text = path.read_text()
        if too_deep(text):
            raise ConfigError(f"{path}: nested more than {MAX_DEPTH} levels deep; flatten it")
        data = yaml.safe_load(text)
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        first = str(err).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML ({first}); fix the file (the example configs under configs/ "
                          "show the format)") from err
    problem = size_problem(data)
    if problem is not None:
        raise ConfigError(f"{path}: {problem}")
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
        key, value = item.split("=", 1)
        try:
            problem = (f"nested more than {MAX_DEPTH} levels deep" if too_deep(value)
                       else size_problem(yaml.safe_load(value)))
        except yaml.YAMLError:
            problem = None  # OmegaConf parses it below and reports a broken value
        if problem is not None:
            raise ConfigError(f"{key}: the override's value is {problem}")
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
        problem = size_problem(overrides)
        if problem is not None:
            raise ConfigError(f"command line: {problem}")
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
        merged = OmegaConf.merge(fresh(), resolved)
    except OmegaConfBaseException as err:
        raise ConfigError(describe_omegaconf_error(err, where)) from err
    bad = non_finite_key(OmegaConf.to_container(merged, resolve=False, throw_on_missing=False))
    if bad is not None:
        raise ConfigError(f"{bad}: {OmegaConf.select(merged, bad, throw_on_missing=False)} is not a finite number "
                          f"(in {where}); give a finite value")
    return merged

