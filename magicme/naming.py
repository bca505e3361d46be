"""Sample names that say what a video is: `<slug>-<hash>`, the hash over everything that determines its pixels.

A stage's video is named by the sha256 (first HASH_LENGTH hex digits) of canonical JSON holding:
- the sample: its prompt with `{id}` filled, negative prompt, seed (a drawn `-1` seed resolved), γ;
- the run-wide settings: every top-level key except the ones listed below (SAMPLE_KEYS, FILE_KEYS, FREE_KEYS, the
  stage list and the stage blocks) — so a key added later counts as pixel-affecting until it is listed here;
- the stage list up to and including this stage, each with its settings block (a later stage's settings never
  rename an earlier stage's video);
- in place of each setting that names an existing file or folder (base, VAE, motion module, MotionLoRAs,
  input_video, face.clipseg_model, a tiled.upscaler file, …), the file's fingerprint — not its path, so moving the
  models renames nothing — and the fingerprint of the embedding file of each identity the prompts use (not the
  whole embeddings_dir: adding an identity renames nothing).

A fingerprint is sha256 over the size and the first and last FINGERPRINT_BYTES of a file (a folder: of its files'
relative paths and fingerprints): stable across copies and machines (no mtime), a few MB read per model, and it
changes with any retrained weights (a safetensors header alone would not: it holds shapes, not values).
The sample's position (index) is not hashed: reordering or adding prompts renames nothing.
"""

import hashlib
import json
from dataclasses import replace
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from magicme.errors import ConfigError
from magicme.prompts import keyframes, referenced_names
from magicme.stages import STAGES, Sample

HASH_LENGTH = 10
FINGERPRINT_BYTES = 1 << 20

# Hashed through each Sample's own fields (its filled prompt, negative prompt, seed, γ), not as settings.
SAMPLE_KEYS = ("prompts", "seeds", "negative_prompt", "gamma", "identities", "class_words")
# How the files are written, not what they show: not hashed, but fixed for a run folder (a finished sample's files
# would otherwise differ from a resumed one's).
FILE_KEYS = ("fps", "formats", "save_frames")
# Where the run goes, how memory is managed and which attention kernel computes (`auto` measures, so two runs of one
# config may pick different kernels; the one used is recorded per video): neither hashed nor fixed.
FREE_KEYS = ("output_dir", "cpu_offload", "sdpa_backend")
NOT_SETTINGS = SAMPLE_KEYS + FILE_KEYS + FREE_KEYS + ("stages",)
UNHASHED_FILES = ("model.embeddings_dir",)  # fingerprinted per identity used instead


def canonical(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def digest(value) -> str:
    return hashlib.sha256(canonical(value).encode()).hexdigest()[:HASH_LENGTH]


def file_fingerprint(path: Path) -> str:
    size = path.stat().st_size
    sha = hashlib.sha256(str(size).encode())
    with open(path, "rb") as handle:
        sha.update(handle.read(FINGERPRINT_BYTES))
        if size > FINGERPRINT_BYTES:
            handle.seek(max(FINGERPRINT_BYTES, size - FINGERPRINT_BYTES))
            sha.update(handle.read())
    return sha.hexdigest()


def fingerprint(path: Path | str) -> str:
    """A file's fingerprint, or a folder's over its (non-hidden) files."""
    path = Path(path)
    if path.is_file():
        return file_fingerprint(path)
    files = sorted(p for p in path.rglob("*") if p.is_file() and not any(
        part.startswith(".") for part in p.relative_to(path).parts))
    return hashlib.sha256(canonical([[p.relative_to(path).as_posix(), file_fingerprint(p)] for p in files])
                          .encode()).hexdigest()


def settings_view(cfg: DictConfig, fingerprints: dict[str, str]) -> dict:
    """The top-level keys that fix a run's videos (all but SAMPLE_KEYS, FREE_KEYS and the blocks of stages it does
    not use), every file setting replaced by its file's fingerprint: moving the models renames nothing, changing
    one does."""
    def view(value, key: str):
        if key in fingerprints:
            return {"file": fingerprints[key][:16]}
        if isinstance(value, dict):
            return {k: view(v, f"{key}.{k}") for k, v in value.items()}
        if isinstance(value, list):
            return [view(v, f"{key}[{i}]") for i, v in enumerate(value)]
        return value

    everything = OmegaConf.to_container(cfg, resolve=True)
    return {k: view(v, k) for k, v in everything.items()
            if k not in SAMPLE_KEYS + FREE_KEYS and (k not in STAGES or k in cfg.stages)}


def named_files(value, key: str) -> dict[str, str]:
    """{dotted key: path} of every string leaf under `value` that names an existing file or folder."""
    if isinstance(value, dict):
        return {k: v for name, item in value.items() for k, v in named_files(item, f"{key}.{name}").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in named_files(item, f"{key}[{i}]").items()}
    if isinstance(value, str) and value and key not in UNHASHED_FILES and Path(value).exists():
        return {key: value}
    return {}


def file_fingerprints(cfg: DictConfig, embeddings: dict[str, Path]) -> dict[str, str]:
    """{config key: fingerprint} of every file the run's pixels depend on; identities as `embedding:<name>`."""
    paths = {k: v for key, value in settings_view(cfg, {}).items() for k, v in named_files(value, key).items()}
    prints = {key: fingerprint(path) for key, path in sorted(paths.items())}
    return prints | {f"embedding:{name}": fingerprint(path) for name, path in sorted(embeddings.items())}


def name_samples(cfg: DictConfig, samples: list[Sample], fingerprints: dict[str, str]) -> list[Sample]:
    """Every sample with the hash of each of its stages' videos (its `name` and file stems follow from them)."""
    view = settings_view(cfg, fingerprints)
    run = {k: v for k, v in view.items() if k not in NOT_SETTINGS and k not in STAGES}
    chain = [{"stage": stage, "settings": view.get(stage)} for stage in cfg.stages]
    named = []
    for sample in samples:
        texts = [t for p in (sample.prompt, sample.negative_prompt) for t in keyframes(p).values()]
        used = sorted({n for t in texts for n in referenced_names(t)})
        base = {"run": run, "embeddings": {n: fingerprints[f"embedding:{n}"] for n in used},
                "sample": {"prompt": sample.prompt, "negative_prompt": sample.negative_prompt, "seed": sample.seed,
                           "gamma": sample.gamma}}
        hashes = tuple((stage, digest({**base, "stages": chain[:k + 1]})) for k, stage in enumerate(cfg.stages))
        named.append(replace(sample, hashes=hashes))
    return named


def leaf_changes(old, new, key: str) -> list[tuple[str, object, object]]:
    """(dotted key, old, new) of every leaf that differs."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [c for k in sorted(set(old) | set(new), key=str)
                for c in leaf_changes(old.get(k), new.get(k), f"{key}.{k}" if key else str(k))]
    return [] if old == new else [(key, old, new)]


def setting_changes(saved: DictConfig, saved_prints: dict[str, str], cfg: DictConfig,
                    prints: dict[str, str]) -> list[tuple[str, object, object]]:
    """What differs between a run's saved config (and its files' fingerprints then) and a new one, in the keys that
    fix its videos' pixels and files; the prompts, seeds and identities are compared by `resumed_seeds`."""
    changes = leaf_changes(settings_view(saved, saved_prints), settings_view(cfg, prints), "")
    return changes + [(key, saved_prints.get(key), prints.get(key)) for key in sorted(set(saved_prints) | set(prints))
                      if key.startswith("embedding:") and saved_prints.get(key) != prints.get(key)]


def resumed_seeds(saved: DictConfig, cfg: DictConfig) -> tuple[list[int], list[tuple[str, object, object]]]:
    """The seed of every prompt × seed of `cfg`, read back from the run's `saved` config (a `-1` takes the seed the
    run drew), and the changes in prompts, seeds and identities."""
    from magicme.grid import resolve_identities
    from magicme.schema import prompt_entries, seed_slots

    old_entries, new_entries = prompt_entries(saved), prompt_entries(cfg)
    old_slots, new_slots = seed_slots(old_entries), seed_slots(new_entries)
    changes = []
    old_ids, new_ids = resolve_identities(saved), resolve_identities(cfg)
    if list(old_ids or []) != list(new_ids or []):
        changes.append(("identities", list(old_ids or []) or None, list(new_ids or []) or None))
    elif old_ids != new_ids:
        changes.append(("class_words", old_ids, new_ids))
    if len(old_slots) != len(new_slots):
        changes.append(("prompts", f"{len(old_slots)} prompt × seed pairs", f"{len(new_slots)}"))
        return [], changes
    seeds = []
    for (i, old_seed), (j, new_seed) in zip(old_slots, new_slots):
        old, new = old_entries[i], new_entries[j]
        for field in ("prompt", "negative_prompt", "gamma"):
            if getattr(old, field) != getattr(new, field):
                changes.append((f"prompts[{j}].{field}", getattr(old, field), getattr(new, field)))
        if new_seed not in (-1, old_seed):
            changes.append((f"prompts[{j}].seeds", old_seed, new_seed))
        seeds.append(old_seed)
    return seeds, changes


def describe_changes(changes: list[tuple[str, object, object]], run_dir: Path) -> ConfigError:
    keys = list(dict.fromkeys(key for key, _, _ in changes))
    key, old, new = changes[0]
    return ConfigError(f"{', '.join(keys)}: differ from the run in {run_dir} ({key}: {old!r} there, {new!r} now); "
                       f"resume it with its settings ({run_dir / 'config.yaml'}), choose another --run-dir, or pass "
                       f"--force-new to move that run aside and start afresh")
