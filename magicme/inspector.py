"""Model-file inspector: does every file a `model:` block names exist, have the expected format and version, and
fit the rest — read from headers, before any model loads.

One inspector serves `sample.py`, `train.py` and `scripts/check_models.py`. Safetensors files are read header-only
(the JSON header, checked against the file's size, so a truncated download is caught without reading a tensor);
pickled `.ckpt`/`.pt`/`.bin` files go through `magicme.checkpoint_io.load_checkpoint` (weights_only, memory-mapped),
which imports torch, so torch is imported only inside the functions that read such files: importing this module
costs no torch or diffusers. What is checked:

- base: a diffusers folder (component configs, weights headers, tokenizer; both encoders and tokenizers for SD-XL)
  or a single-file LDM checkpoint (SD1.5 family only) whose shapes must fit the `base_config` folder it borrows
  configs and tokenizer from; its family must be `model.family`'s;
- vae: a diffusers folder or single file with 4 latent channels, required when the base has no VAE weights;
- motion module: a file in the original AnimateDiff or the diffusers key layout (v1/v2/v3 and SD1.5/SDXL read from
  header shapes) or a MotionAdapter folder, of `model.family` and with the base UNet's channel widths; MotionLoRAs
  must target weights that module has, with a strength in [0, 2];
- image LoRAs (`model.loras`): readable LoRA files of an SD1.5 UNet/text encoder, strength in [0, 2];
- embeddings: each identity has tokens, finite values and the text encoder's width (SD-XL: `clip_l` and `clip_g`
  with both encoders' widths), and no two names differ only by case (both would become the same lower-case token);
- every other model a run loads (`inspect_files`: ControlNets and SparseCtrl, CLIPSeg, depth / pose preprocessors,
  upscalers; listed by `magicme.schema.model_files`): config.json and every weights file's header.
"""

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from magicme.errors import ConfigError
from magicme.safetensors_header import safetensors_header

OK, WARN, FAIL = "ok", "warn", "FAIL"
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")
WEIGHT_SUFFIXES = (".safetensors", ".bin")
UNET_KEY = "model.diffusion_model."
VAE_KEYS = ("first_stage_model.", "vae.")
TEXT_TOKEN_KEY = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"
CROSS_ATTN_KEY = UNET_KEY + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
# SD-XL files: the first encoder in transformers' layout, the second in OpenCLIP's; the UNet's first attention is at
# its second level (input_blocks.4)
SDXL_TEXT_TOKEN_KEYS = ("conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
                        "conditioner.embedders.1.model.token_embedding.weight")
SDXL_CROSS_ATTN_KEY = UNET_KEY + "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"
SD2_WIDTH = 1024
MOTION_KEY = ".temporal_transformer."
NO_PE_MAX_LENGTH = 64  # AnimateLCM's PositionalEncoding length (its files carry no `pos_encoder` tensors)
_MOTION_RENAMES = (  # diffusers name -> original AnimateDiff name, inside a motion transformer block
    ("attn1", "attention_blocks.0"), ("attn2", "attention_blocks.1"),
    ("norm1", "norms.0"), ("norm2", "norms.1"), ("norm3", "ff_norm"),
)


@dataclass(frozen=True)
class MotionModuleInfo:
    version: str  # "v1" | "v2" | "v3"
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    mid_block: bool
    max_seq_length: int
    layout: str = "original"  # "original" | "diffusers" (a file's key layout) | "folder" (a MotionAdapter folder)
    positional_weights: bool = True  # False: the file has no sinusoid tables (AnimateLCM); they are rebuilt
    family: str = "sd15"  # the base family it was trained for: "sd15" (4 UNet levels) or "sdxl" (3)


@dataclass
class Check:
    item: str
    path: str
    status: str  # ok | warn | FAIL
    detail: str


@dataclass
class ModelInfo:
    """What the rest of a run must fit, known before loading; None where a Hub model is only known once loaded."""
    family: str = "sd15"
    text_width: int | None = None  # text encoder hidden size (embedding width)
    text_width_2: int | None = None  # SD-XL's second text encoder's (its embeddings' clip_g width)
    unet_channels: tuple[int, ...] | None = None
    cross_attention: int | None = None
    has_vae: bool = True
    motion: MotionModuleInfo | None = None


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    info: ModelInfo = field(default_factory=ModelInfo)

    def add(self, item: str, path: Path | str | None, status: str, detail: str) -> None:
        self.checks.append(Check(item, str(path) if path is not None else "-", status, detail))

    @property
    def ok(self) -> bool:
        return all(c.status != FAIL for c in self.checks)

    def table(self) -> str:
        rows = [("item", "path", "status", "detail")] + [(c.item, c.path, c.status, c.detail) for c in self.checks]
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = ["  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3] for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * 6)
        return "\n".join(lines)

    def raise_first(self) -> None:
        """Raise the first failure as the one ConfigError a run stops with; nothing when all is well."""
        for c in self.checks:
            if c.status == FAIL:
                raise ConfigError(f"{c.item}: {c.path}: {c.detail}")

    def fail(self, item: str, path: Path | str, err: ConfigError) -> None:
        """A ConfigError about `path` as a FAIL row, without repeating the path the row already shows."""
        self.add(item, path, FAIL, str(err).removeprefix(f"{path}: "))


def is_hub_id(value: str) -> bool:
    """`org/name` that is not a local path: fetched from the Hugging Face Hub only because the user wrote it."""
    parts = value.split("/")
    return len(parts) == 2 and all(parts) and not Path(value).exists() and not value.startswith((".", "~", "models/"))


# --- reading tensor files -------------------------------------------------------------------------------------


def _pickle_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of a pickled checkpoint: the one reader that needs torch, imported here only."""
    import torch

    from magicme.checkpoint_io import load_checkpoint

    state = load_checkpoint(path)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError(f"{path}: not a state dict of tensors")
    return {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}


def tensor_shapes(path: Path | str) -> dict[str, tuple[int, ...]]:
    """Shapes of the tensors in a `.safetensors` file (header only) or a `.ckpt`/`.pt`/`.pth`/`.bin` pickle
    (tensors only, `weights_only`, memory-mapped where the file allows); a `{"state_dict": ...}` wrapper is
    unwrapped."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return {k: tuple(v["shape"]) for k, v in safetensors_header(path).items() if k != "__metadata__"}
    return _pickle_shapes(path)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: unreadable JSON ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: not a JSON object")
    return data


def weight_files(folder: Path) -> list[Path]:
    """The weights diffusers would load from a component folder: its safetensors files, else its `.bin` files."""
    files = sorted(p for p in folder.glob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    safetensors = [p for p in files if p.suffix == ".safetensors"]
    return safetensors or files


def _check_weights(report: Report, item: str, folder: Path) -> dict[str, tuple[int, ...]] | None:
    """Read every weights file's header in `folder`; their merged shapes, or None after reporting a FAIL."""
    files = weight_files(folder)
    if not files:
        report.add(item, folder, FAIL, "no weights (*.safetensors / *.bin); download incomplete?")
        return None
    shapes = {}
    for path in files:
        try:
            shapes.update(tensor_shapes(path))
        except ConfigError as err:
            report.fail(item, path, err)
            return None
    return shapes


def hf_model_present(folder: Path) -> bool:
    """A transformers/diffusers model folder that looks complete enough to load (config + weights)."""
    return (folder / "config.json").is_file() and bool(weight_files(folder))


# --- motion modules -------------------------------------------------------------------------------------------


def _shape(value: Any) -> tuple[int, ...]:
    """A header shape as it is, or a tensor's shape: motion-module inspection runs on either."""
    return tuple(value.shape) if hasattr(value, "shape") else tuple(value)


def motion_version(mid_block: bool, max_seq_length: int) -> str:
    """As AnimateDiff-Evolved tells them apart: a mid-block module means v2; else 24 frames v1, 32 frames v3."""
    return "v2" if mid_block else ("v1" if max_seq_length == 24 else "v3")


def motion_layout(keys: Iterable[str]) -> str | None:
    """Which key layout a motion module file has, from its keys alone (never its name): "original" (guoyww's
    `.ckpt`, AnimateLCM, AnimateDiff-Lightning's `_comfyui` files: `...motion_modules.0.temporal_transformer...`),
    "diffusers" (a `MotionAdapter` state dict, as Lightning's `_diffusers` files: `...motion_modules.0.norm...`), or
    None when it is neither."""
    keys = [k for k in keys if ".motion_modules." in k and "_lora." not in k]
    if any(MOTION_KEY in k for k in keys):
        return "original"
    if any(".transformer_blocks." in k for k in keys):
        return "diffusers"
    return None


def inspect_motion_module(state: Mapping[str, Any], path: Path | str = "motion module") -> MotionModuleInfo:
    """Version and shape of a motion module file from its keys and shapes alone (header shapes or tensors), in
    either key layout (`motion_layout`), since these files carry no config.

    A module without positional-encoding weights (AnimateLCM's files have none) gets the sinusoids its own code
    builds, for up to NO_PE_MAX_LENGTH frames; the sinusoid of a frame does not depend on that length."""
    layout = motion_layout(state)
    if layout is None:
        hint = (
            "it looks like a MotionLoRA: list it under model.motion_loras"
            if any("_lora." in k for k in state)
            else "expected keys like 'down_blocks.0.motion_modules.0.temporal_transformer...'"
        )
        raise ConfigError(f"{path}: not an AnimateDiff motion module; {hint}")
    inner = MOTION_KEY.strip(".") + "." if layout == "original" else ""
    keys = [k for k in state if ".motion_modules." in k and "_lora." not in k]
    down = sorted({int(k.split(".")[1]) for k in keys if k.startswith("down_blocks.")})
    norms = [state.get(f"down_blocks.{i}.motion_modules.0.{inner}norm.weight") for i in down]
    if not down or any(n is None for n in norms):
        raise ConfigError(f"{path}: incomplete motion module (no input norm weights in its down blocks)")
    channels = tuple(_shape(n)[0] for n in norms)
    layers = len({k.split(".")[3] for k in keys if k.startswith("down_blocks.0.")})
    pe = [v for k, v in state.items() if k.endswith(("pos_encoder.pe", "pos_embed.pe"))]
    max_len = _shape(pe[0])[1] if pe else NO_PE_MAX_LENGTH
    mid = any(k.startswith("mid_block.") for k in keys)
    return MotionModuleInfo(motion_version(mid, max_len), channels, layers, mid, max_len, layout, bool(pe),
                            motion_family(channels))


def motion_family(block_out_channels: tuple[int, ...]) -> str:
    """The base family a motion module fits, from its number of UNet levels: SD-XL's UNet has 3 (320, 640, 1280),
    SD1.5's 4 (the tiny SD1.5 bundle's 2, its SD-XL one's 3)."""
    return "sdxl" if len(block_out_channels) == 3 else "sd15"


def motion_info_from_config(config: Mapping[str, Any], path: Path | str = "motion module") -> MotionModuleInfo:
    """The same facts from a diffusers MotionAdapter's config (config.json or `adapter.config`)."""
    if "block_out_channels" not in config:
        raise ConfigError(f"{path}: not a MotionAdapter config (no block_out_channels)")
    mid = bool(config.get("use_motion_mid_block", True))
    max_len = int(config.get("motion_max_seq_length", 32))
    layers = config.get("motion_layers_per_block", 2)
    layers = layers if isinstance(layers, int) else layers[0]
    channels = tuple(config["block_out_channels"])
    return MotionModuleInfo(motion_version(mid, max_len), channels, layers, mid, max_len, "folder",
                            family=motion_family(channels))


def original_motion_key(diffusers_key: str) -> str:
    """`down_blocks.0.motion_modules.1.transformer_blocks.0.attn1.to_q.weight` →
    `down_blocks.0.motion_modules.1.temporal_transformer.transformer_blocks.0.attention_blocks.0.to_q.weight`."""
    block, _, rest = diffusers_key.partition(".motion_modules.")
    index, _, tail = rest.partition(".")
    for new, old in _MOTION_RENAMES:
        tail = tail.replace(f".{new}.", f".{old}.")
    return f"{block}.motion_modules.{index}{MOTION_KEY}{tail}"


def lora_target_weights(keys: Iterable[str]) -> dict[str, tuple[str, str]]:
    """Map each original-layout motion weight a MotionLoRA changes to its (down, up) keys in the LoRA file:
    `…attention_blocks.0.processor.to_q_lora.down.weight` targets `…attention_blocks.0.to_q.weight`, and
    `to_out_lora` targets `to_out.0.weight`. Plain key renaming, so the fit is checked on headers alone."""
    targets = {}
    for down_key in (k for k in keys if k.endswith("_lora.down.weight")):
        weight_key = down_key.replace(".processor.", ".").replace("_lora.down.weight", ".weight")
        weight_key = weight_key.replace(".to_out.weight", ".to_out.0.weight")
        targets[weight_key] = (down_key, down_key.replace(".down.weight", ".up.weight"))
    return targets


# --- the model: block -----------------------------------------------------------------------------------------


def _sd_folder_info(report: Report, item: str, folder: Path, parts: tuple[str, ...], need_weights: bool) -> ModelInfo:
    """An SD1.5 or SD-XL diffusers folder: each part's config (+ weights headers when `need_weights`) and a
    tokenizer (both encoders and tokenizers for SD-XL, which `text_encoder_2/` marks)."""
    info = ModelInfo(has_vae=(folder / "vae" / "config.json").is_file())
    if (folder / "text_encoder_2").is_dir():
        info.family = "sdxl"
        parts = (*parts, "text_encoder_2")
    for part in parts:
        if not (folder / part / "config.json").is_file():
            report.add(item, folder / part, FAIL, "config.json missing: not a diffusers SD folder")
        elif need_weights:
            _check_weights(report, item, folder / part)
    for tokenizer in [folder / "tokenizer"] + ([folder / "tokenizer_2"] if info.family == "sdxl" else []):
        if not ((tokenizer / "vocab.json").is_file() and (tokenizer / "merges.txt").is_file()):
            report.add(item, tokenizer, FAIL, f"tokenizer (vocab.json, merges.txt) missing; re-download the "
                                              f"{FAMILY_LABELS[info.family]} folder (bash download_checkpoint.sh "
                                              f"--only {info.family})")
    try:
        if (folder / "unet" / "config.json").is_file():
            unet = _read_json(folder / "unet" / "config.json")
            info.unet_channels = tuple(unet.get("block_out_channels", ())) or None
            info.cross_attention = unet.get("cross_attention_dim")
        if (folder / "text_encoder" / "config.json").is_file():
            info.text_width = _read_json(folder / "text_encoder" / "config.json").get("hidden_size")
        if (folder / "text_encoder_2" / "config.json").is_file():
            info.text_width_2 = _read_json(folder / "text_encoder_2" / "config.json").get("hidden_size")
    except ConfigError as err:
        report.add(item, folder, FAIL, str(err))
    if info.cross_attention == SD2_WIDTH:
        info.family = "sd2"
    return info


FAMILY_LABELS = {"sd15": "SD1.5", "sdxl": "SDXL"}
FAMILY_NAMES = {"sd15": "an SD1.5 model", "sdxl": "an SDXL model", "sd2": f"an SD2 model (cross-attention {SD2_WIDTH})"}


def _family_fails(report: Report, item: str, path: Path, family: str, wanted: str) -> bool:
    """Report a base of another family than `model.family` (`wanted`) as a FAIL: its widths fit none of that
    family's motion modules or embeddings."""
    if family == wanted:
        return False
    hint = f"set model.family: {family}" if family in ("sd15", "sdxl") else "magicme runs SD1.5 and SDXL models"
    report.add(item, path, FAIL, f"{FAMILY_NAMES[family]}, but model.family is {wanted}; {hint}")
    return True


def _inspect_folder_base(report: Report, base: Path, separate_vae: bool, family: str) -> ModelInfo:
    """A diffusers base folder; its vae/ is checked only when it is the VAE the run will load."""
    before = len(report.checks)
    parts = ("unet", "text_encoder") if separate_vae or not (base / "vae").is_dir() else ("unet", "text_encoder", "vae")
    info = _sd_folder_info(report, "model.base", base, parts, need_weights=True)
    if not _family_fails(report, "model.base", base, info.family, family) and len(report.checks) == before:
        widths = info.text_width if info.text_width_2 is None else f"{info.text_width} + {info.text_width_2}"
        report.add("model.base", base, OK, f"diffusers folder; UNet {info.unet_channels}, text width {widths}")
    return info


def _single_file_info(report: Report, base: Path, family: str) -> tuple[ModelInfo, int] | None:
    """What a single-file LDM checkpoint holds and its UNet's input width, or None after reporting why it is not
    a base of `family`. Its UNet's channel widths come from `base_config`."""
    try:
        shapes = tensor_shapes(base)
    except ConfigError as err:
        report.fail("model.base", base, err)
        return None
    if any(k.startswith("conditioner.embedders.") for k in shapes):
        return None if _family_fails(report, "model.base", base, "sdxl", family) else \
            _sdxl_single_file_info(report, base, shapes)
    if family != "sd15":
        _family_fails(report, "model.base", base, "sd15", family)
        return None
    if UNET_KEY + "input_blocks.0.0.weight" not in shapes or TEXT_TOKEN_KEY not in shapes:
        report.add("model.base", base, FAIL, "not an SD1.5 single-file checkpoint (no 'model.diffusion_model.' UNet "
                                             "or CLIP text encoder keys)")
        return None
    info = ModelInfo(text_width=shapes[TEXT_TOKEN_KEY][1], cross_attention=shapes.get(CROSS_ATTN_KEY, (0, 0))[1],
                     has_vae=any(k.startswith(VAE_KEYS) for k in shapes))
    if info.cross_attention == SD2_WIDTH:
        _family_fails(report, "model.base", base, "sd2", family)
        return None
    vae_note = "with VAE" if info.has_vae else "no VAE weights (noVAE)"
    report.add("model.base", base, OK, f"single-file LDM checkpoint, text width {info.text_width}, {vae_note}")
    return info, shapes[UNET_KEY + "input_blocks.0.0.weight"][0]


def _sdxl_single_file_info(report: Report, base: Path, shapes: dict) -> tuple[ModelInfo, int] | None:
    """An SD-XL single file (`sd_xl_base_1.0.safetensors` and fine-tunes): both encoders' widths, its UNet's."""
    if UNET_KEY + "input_blocks.0.0.weight" not in shapes or any(k not in shapes for k in SDXL_TEXT_TOKEN_KEYS):
        report.add("model.base", base, FAIL, "not an SD-XL base checkpoint (no UNet, or not both text encoders: a "
                                             "refiner?); use an SD-XL base file or folder")
        return None
    info = ModelInfo(family="sdxl", text_width=shapes[SDXL_TEXT_TOKEN_KEYS[0]][1],
                     text_width_2=shapes[SDXL_TEXT_TOKEN_KEYS[1]][1],
                     cross_attention=shapes.get(SDXL_CROSS_ATTN_KEY, (0, 0))[1],
                     has_vae=any(k.startswith(VAE_KEYS) for k in shapes))
    vae_note = "with VAE" if info.has_vae else "no VAE weights"
    report.add("model.base", base, OK, f"single-file SD-XL checkpoint, text width {info.text_width} + "
                                       f"{info.text_width_2}, {vae_note}")
    return info, shapes[UNET_KEY + "input_blocks.0.0.weight"][0]


def _base_config_info(report: Report, model: Mapping, base: Path, file_info: ModelInfo, unet_in: int) -> ModelInfo:
    """The diffusers folder a single-file base borrows configs and tokenizer from, which must fit the file."""
    value = model.get("base_config")
    if value is not None and is_hub_id(str(value)):
        report.add("model.base_config", value, WARN, "Hub id, checked when loaded")
        return file_info
    family = file_info.family
    if value is None or not Path(str(value)).is_dir():
        report.add("model.base_config", value, FAIL, f"a single-file base needs a diffusers {FAMILY_LABELS[family]} "
                                                     f"folder (configs + tokenizer); run: bash download_checkpoint.sh "
                                                     f"--only {family}")
        return file_info
    config = Path(str(value))
    before = len(report.checks)
    cfg = _sd_folder_info(report, "model.base_config", config, ("unet", "vae", "text_encoder"), need_weights=False)
    if cfg.family != family:
        report.add("model.base_config", config, FAIL, f"{FAMILY_NAMES[cfg.family]} folder, but {base.name} is "
                                                      f"{FAMILY_NAMES[family]}; give the {FAMILY_LABELS[family]} "
                                                      f"folder it was fine-tuned from")
        return file_info
    mismatches = []
    if cfg.unet_channels and cfg.unet_channels[0] != unet_in:
        mismatches.append(f"UNet width {unet_in} vs config {cfg.unet_channels[0]}")
    if cfg.text_width and cfg.text_width != file_info.text_width:
        mismatches.append(f"text width {file_info.text_width} vs config {cfg.text_width}")
    if cfg.text_width_2 and cfg.text_width_2 != file_info.text_width_2:
        mismatches.append(f"second text width {file_info.text_width_2} vs config {cfg.text_width_2}")
    if cfg.cross_attention and cfg.cross_attention != file_info.cross_attention:
        mismatches.append(f"cross-attention {file_info.cross_attention} vs config {cfg.cross_attention}")
    if mismatches:
        report.add("model.base_config", config, FAIL, f"does not fit {base.name}: {'; '.join(mismatches)}")
    elif len(report.checks) == before:
        report.add("model.base_config", config, OK, f"configs + tokenizer fit the file (UNet {cfg.unet_channels})")
    file_info.unet_channels = cfg.unet_channels
    return file_info


def _inspect_base(report: Report, model: Mapping) -> None:
    """Fills report.info with the base's widths (left unknown for a Hub id)."""
    value = str(model.get("base"))
    base = Path(value)
    family = model.get("family", "sd15")
    if is_hub_id(value):
        report.add("model.base", value, WARN, "Hub id, checked when loaded")
        report.info.family = family
    elif base.is_dir():
        report.info = _inspect_folder_base(report, base, separate_vae=model.get("vae") is not None, family=family)
    elif not base.is_file():
        group = "sdxl" if family == "sdxl" else "base" if base.suffix in CHECKPOINT_SUFFIXES else "sd15"
        report.add("model.base", base, FAIL, f"not found; run: bash download_checkpoint.sh --only {group} (or "
                                             f"scripts/make_tiny_models.py for the tiny test models), or give a Hub id")
    elif base.suffix not in CHECKPOINT_SUFFIXES:
        report.add("model.base", base, FAIL, f"a file but not a checkpoint ({', '.join(CHECKPOINT_SUFFIXES)})")
    elif (found := _single_file_info(report, base, family)) is not None:
        report.info = _base_config_info(report, model, base, *found)


def _vae_latent_channels(report: Report, vae: Path) -> int | None:
    """Latent channels of a VAE folder or file, or None after reporting why it is not a usable VAE."""
    if vae.is_dir():
        folder = vae / "vae" if (vae / "vae" / "config.json").is_file() else vae
        if not (folder / "config.json").is_file():
            report.add("model.vae", vae, FAIL, "no config.json (not a diffusers AutoencoderKL folder)")
            return None
        if _check_weights(report, "model.vae", folder) is None:
            return None
        try:
            return _read_json(folder / "config.json").get("latent_channels", 4)
        except ConfigError as err:
            report.add("model.vae", vae, FAIL, str(err))
            return None
    try:
        shapes = tensor_shapes(vae)
    except ConfigError as err:
        report.fail("model.vae", vae, err)
        return None
    quant = [s for k, s in shapes.items() if k.endswith("quant_conv.weight") and "post_" not in k]
    if not quant:
        report.add("model.vae", vae, FAIL, "not a VAE file (no quant_conv weights)")
        return None
    return quant[0][0] // 2


def _inspect_vae(report: Report, model: Mapping) -> None:
    """A separate VAE when one is set (then the run has a VAE whatever the base holds), else the base's own."""
    value = model.get("vae")
    if value is None:
        if not report.info.has_vae:
            report.add("model.vae", None, FAIL, "the base has no VAE weights; set model.vae (e.g. "
                                                "models/vae/sd-vae-ft-mse; bash download_checkpoint.sh --only vae)")
        return
    vae = Path(str(value))
    if not vae.exists():
        if is_hub_id(str(value)):
            report.add("model.vae", value, WARN, "Hub id, checked when loaded")
        else:
            report.add("model.vae", vae, FAIL, "not found; run: bash download_checkpoint.sh --only vae")
        return
    latent = _vae_latent_channels(report, vae)
    if latent is not None:
        status = OK if latent == 4 else FAIL
        report.add("model.vae", vae, status, f"{latent} latent channels" + ("" if status == OK else "; SD1.5 needs 4"))
    report.info.has_vae = True


def _motion_folder(report: Report, folder: Path) -> tuple[MotionModuleInfo, set[str]] | None:
    """A diffusers MotionAdapter folder: its config, and its weights renamed to the original layout."""
    try:
        info = motion_info_from_config(_read_json(folder / "config.json"), folder / "config.json")
    except ConfigError as err:
        report.add("model.motion_module", folder, FAIL, f"not a MotionAdapter folder ({err})")
        return None
    shapes = _check_weights(report, "model.motion_module", folder)
    if shapes is None:
        return None
    return info, {original_motion_key(k) for k in shapes}


def _inspect_motion(report: Report, model: Mapping) -> set[str] | None:
    """Fills report.info.motion; returns the module's original-layout weight names for the MotionLoRA check, or
    None when the module could not be read."""
    mm = Path(str(model.get("motion_module")))
    if mm.is_dir():
        found = _motion_folder(report, mm)
    elif mm.is_file():
        try:
            shapes = tensor_shapes(mm)
            info = inspect_motion_module(shapes, mm)
            found = info, set(shapes) if info.layout == "original" else {original_motion_key(k) for k in shapes}
        except ConfigError as err:
            report.fail("model.motion_module", mm, err)
            return None
    else:
        group = "sdxl" if model.get("family") == "sdxl" else "motion"
        report.add("model.motion_module", mm, FAIL, f"not found; run: bash download_checkpoint.sh --only {group}")
        return None
    if found is None:
        return None
    info, weights = found
    report.info.motion = info
    version = "SDXL" if info.family == "sdxl" else info.version
    detail = f"AnimateDiff {version}, {info.max_seq_length} frames max, channels {info.block_out_channels}"
    unet = report.info.unet_channels
    family = model.get("family", "sd15")
    if info.family != family:
        report.add("model.motion_module", mm, FAIL, f"an {FAMILY_LABELS[info.family]} motion module, but "
                                                    f"model.family is {family}; use a motion module made for "
                                                    f"{FAMILY_LABELS.get(family, family)} bases")
    elif unet and tuple(unet) != info.block_out_channels:
        report.add("model.motion_module", mm, FAIL, f"{detail} do not fit the base UNet {tuple(unet)}; use a motion "
                                                    f"module made for this base's family")
    else:
        report.add("model.motion_module", mm, OK, f"{detail}, {info.layout} layout" + (
            "" if info.positional_weights else ", no positional tensors (AnimateLCM): sinusoids rebuilt"))
    return weights


def _lora_files(report: Report, model: Mapping, block: str, download: str):
    """(key, path, strength) of each file listed in `model.<block>` that exists; a strength outside [0, 2] and a
    missing file are reported here."""
    for i, lora in enumerate(model.get(block) or []):
        key, path = f"model.{block}[{i}].path", Path(str(lora.get("path")))
        strength = lora.get("strength", 1.0)
        if not isinstance(strength, (int, float)) or not 0.0 <= strength <= 2.0:
            report.add(f"model.{block}[{i}].strength", path, FAIL, f"{strength} not in [0, 2]")
        if not path.is_file():
            report.add(key, path, FAIL, f"not found; check the path (bash download_checkpoint.sh {download})")
            continue
        yield key, path, strength


def _inspect_motion_loras(report: Report, model: Mapping, motion_weights: set[str] | None) -> None:
    """Each MotionLoRA must target only weights the motion module has (official ones need v2), strength in [0, 2]."""
    for key, path, strength in _lora_files(report, model, "motion_loras", "--only lora for the ZoomIn MotionLoRA"):
        try:
            targets = lora_target_weights(tensor_shapes(path))
        except ConfigError as err:
            report.fail(key, path, err)
            continue
        if not targets:
            report.add(key, path, FAIL, "not a MotionLoRA (no '..._lora.down.weight' keys)")
        elif motion_weights is not None and not set(targets) <= motion_weights:
            missing = len(set(targets) - motion_weights)
            report.add(key, path, FAIL, f"does not fit the motion module ({missing} of {len(targets)} target weights "
                                        f"missing); official MotionLoRAs need a v2 module")
        else:
            report.add(key, path, OK, f"MotionLoRA, {len(targets)} weights, strength {strength}")


# kohya, peft, diffusers (old), AnimateDiff's own (`….processor.to_q_lora.down.weight`: the v3 domain adapter)
LORA_DOWN_SUFFIXES = (".lora_down.weight", ".lora_A.weight", ".lora.down.weight", "_lora.down.weight")
SDXL_LORA_MARKS = ("lora_te2_", "text_encoder_2.", "add_embedding")


def animatediff_lora_layout(keys: Iterable[str]) -> bool:
    """Whether a LoRA is in AnimateDiff's own layout (bare UNet module names, `.processor.<proj>_lora.down.weight`:
    `v3_sd15_adapter.ckpt`), which diffusers' `load_lora_weights` does not read; magicme merges it as AnimateDiff
    does (`magicme.motion_module.merge_animatediff_lora`)."""
    keys = list(keys)
    return bool(lora_target_weights(keys)) and not any(k.startswith(("unet.", "text_encoder.")) for k in keys)


def image_lora_problem(shapes: Mapping[str, Any]) -> str | None:
    """Why a file's keys are not an SD1.5 image LoRA that diffusers' `load_lora_weights` can read, or None."""
    if any(".motion_modules." in k for k in shapes):
        return "a MotionLoRA or motion module, not an image LoRA; list MotionLoRAs under model.motion_loras"
    if any(mark in k for k in shapes for mark in SDXL_LORA_MARKS):
        return "an SDXL LoRA; magicme runs SD1.5-family models"
    if not any(k.endswith(LORA_DOWN_SUFFIXES) for k in shapes):
        return "not a LoRA (no '.lora_down.weight' / '.lora_A.weight' keys)"
    if animatediff_lora_layout(shapes):
        missing = [up for _, up in lora_target_weights(shapes).values() if up not in shapes]
        if missing:
            return f"{len(missing)} '_lora.up.weight' tensors missing (e.g. {missing[0]}): an incomplete LoRA file"
    return None


def _inspect_loras(report: Report, model: Mapping) -> None:
    """Each SD1.5 image LoRA (`model.loras`) must be a readable LoRA file, strength in [0, 2]."""
    for key, path, strength in _lora_files(report, model, "loras", "--only lcm for AnimateLCM's LoRA"):
        try:
            shapes = tensor_shapes(path)
        except ConfigError as err:
            report.fail(key, path, err)
            continue
        problem = image_lora_problem(shapes)
        if problem is not None:
            report.add(key, path, FAIL, problem)
            continue
        downs = [shape for k, shape in shapes.items() if k.endswith(LORA_DOWN_SUFFIXES)]
        layout = "AnimateDiff-layout LoRA" if animatediff_lora_layout(shapes) else "LoRA"
        report.add(key, path, OK, f"{layout}, {len(downs)} layers, rank {downs[0][0]}, strength {strength}")


def inspect_base(model: Mapping) -> Report:
    """Only the base (and its VAE) of a `model:`-like block: what ID-token training loads (no motion module)."""
    report = Report()
    _inspect_base(report, model)
    _inspect_vae(report, model)
    return report


def inspect_model(model: Mapping, report: Report | None = None, embedding_names: list[str] | None = None) -> Report:
    """Check a `model:` block's files from their headers and fill `report.info` with what the run must fit.

    Embeddings: every identity in `model.embeddings_dir`, or only `embedding_names` when given (those the prompts
    use). `scheduler` and `animatediff_numerics` are settings, not files, and are left to the config's checks.
    """
    report = Report() if report is None else report
    _inspect_base(report, model)
    _inspect_vae(report, model)
    _inspect_motion_loras(report, model, _inspect_motion(report, model))
    _inspect_loras(report, model)
    folder = model.get("embeddings_dir")
    if folder is not None or embedding_names:
        widths = report.info.text_width if model.get("family", "sd15") == "sd15" else (
            report.info.text_width, report.info.text_width_2)
        inspect_embeddings(folder, embedding_names, widths, report)
    return report


# --- embeddings and extras ------------------------------------------------------------------------------------


def _select_identities(available: dict[str, Path], names: list[str] | None, folder: Path | str,
                       report: Report) -> dict[str, Path]:
    """All identities in the folder, or `names` (each unknown one a FAIL listing what is there)."""
    if names is None:
        if not available:
            report.add("model.embeddings_dir", folder, WARN, "no .pt/.safetensors/.bin identities in it")
        return available
    listing = ", ".join(sorted(available)) or "none"
    for name in names:
        if name not in available:
            report.add("model.embeddings_dir", folder, FAIL, f"unknown identity {name!r}; available: {listing}")
    return {name: available[name] for name in names if name in available}


def _check_case_collisions(report: Report, folder: Path | str, available: dict[str, Path],
                           selected: dict[str, Path]) -> None:
    """`Ann.pt` next to `ann.pt`: both become the token `<ann>` (CLIP lower-cases prompts), so a prompt naming
    either would get one of them silently."""
    groups: dict[str, list[str]] = {}
    for name in available:
        groups.setdefault(name.lower(), []).append(name)
    for lower, clash in groups.items():
        if len(clash) > 1 and any(name in selected for name in clash):
            report.add("model.embeddings_dir", folder, FAIL, f"{' and '.join(clash)} differ only by case: the token "
                                                             f"<{lower}> would be ambiguous; rename or remove one")


def _embedding_problem(path: Path, text_width: int | tuple | None) -> tuple[str | None, tuple[int, ...] | None]:
    """Why an identity file cannot be used (None if it can), and its (tokens, width, …): one width for SD1.5, a
    tuple of the two encoders' widths (each may be None) for an SD-XL base. Embeddings are small, so they are read
    whole, with torch imported here only."""
    import torch

    from magicme.embeddings import load_embedding_file, load_sdxl_embedding_file

    sdxl = isinstance(text_width, tuple)
    try:
        tensors = load_sdxl_embedding_file(path) if sdxl else (load_embedding_file(path),)
    except ConfigError as err:
        return str(err).removeprefix(f"{path}: "), None
    shape = (tensors[0].shape[0], *(t.shape[1] for t in tensors))
    widths = text_width if sdxl else (text_width,)
    if shape[0] == 0:
        return "0 tokens: an empty embedding; re-train or re-download it", shape
    if not all(torch.isfinite(t).all() for t in tensors):
        return "NaN or infinite values (a diverged training run?); re-train or re-download it", shape
    for name, tensor, width in zip(("clip_l ", "clip_g ") if sdxl else ("",), tensors, widths):
        if width and tensor.shape[1] != width:
            return (f"{name}width {tensor.shape[1]}, the text encoder {width}; use an embedding trained for this "
                    f"base family"), shape
    return None, shape


def inspect_embeddings(folder: Path | str | None, names: list[str] | None, text_width: int | tuple | None,
                       report: Report) -> dict[str, Path]:
    """Check the identity files in `folder` (all of them, or only `names`): each must have at least one token,
    finite values and width `text_width` (unchecked when None; a tuple of both encoders' widths for SD-XL, whose
    files hold clip_l and clip_g), and no two names may differ only by case.
    Returns name → path of the selected identities."""
    from magicme.embeddings import find_embeddings

    item = "model.embeddings_dir"
    if names is not None and not names:
        return {}
    if folder is None or not Path(folder).is_dir():
        status, what = (WARN, "prompts cannot use identities") if names is None else (FAIL, f"needed for {names}")
        report.add(item, folder, status, f"no such folder ({what}); set model.embeddings_dir or run: "
                                         f"bash download_checkpoint.sh --only embeddings")
        return {}
    available = find_embeddings(folder)
    selected = _select_identities(available, names, folder, report)
    _check_case_collisions(report, folder, available, selected)
    shapes = []
    for name, path in selected.items():
        problem, shape = _embedding_problem(path, text_width)
        if problem is not None:
            report.add(item, path, FAIL, f"identity {name!r}: {problem}")
        else:
            shapes.append("×".join(map(str, shape)))
    if shapes:
        report.add(item, folder, OK, f"{len(shapes)} identities ({', '.join(sorted(set(shapes)))})")
    return selected


def inspect_model_folder(report: Report, item: str, folder: Path | str, what: str) -> None:
    """A diffusers or transformers model folder a run loads besides the `model:` block (ControlNet, SparseCtrl,
    CLIPSeg, a depth or pose preprocessor): a readable config.json, and every weights file read from its header (a
    pickled `.bin` through the safe reader), so a truncated, empty or code-carrying file fails before loading."""
    folder = Path(folder)
    if not folder.is_dir():
        report.add(item, folder, FAIL, f"not a folder; give the {what} model folder")
        return
    try:
        _read_json(folder / "config.json")
    except ConfigError as err:
        report.fail(item, folder / "config.json", err)
        return
    shapes = _check_weights(report, item, folder)
    if shapes is not None:
        report.add(item, folder, OK, f"{what}: {len(shapes)} tensors")


def inspect_model_file(report: Report, item: str, path: Path | str, what: str) -> None:
    """A single model file (a ControlNet in the original layout, an upscaler) from its header or the safe reader."""
    try:
        shapes = tensor_shapes(path)
    except ConfigError as err:
        report.fail(item, path, err)
        return
    if not shapes:
        report.add(item, path, FAIL, f"holds no tensors; not a {what} file")
    else:
        report.add(item, path, OK, f"{what}: {len(shapes)} tensors")


def inspect_files(files: Iterable[tuple[str, str, str]], report: Report | None = None) -> Report:
    """Inspect `(config key, path, what)` of every model a run loads besides its `model:` block; a folder is a
    model folder, a file a single model file."""
    report = Report() if report is None else report
    for item, path, what in files:
        if Path(path).is_dir():
            inspect_model_folder(report, item, path, what)
        else:
            inspect_model_file(report, item, path, what)
    return report


def inspect_extras(report: Report, models_dir: Path | str) -> None:
    """Models outside the `model:` block (training, Face VCD, evaluation, upscaling): reported, never required."""
    models_dir = Path(models_dir)
    hf_folders = {
        "clipseg": (models_dir / "clipseg", "CLIPSeg (training masks, Face VCD)"),
        "eval-clip": (models_dir / "eval" / "clip-vit-large-patch14", "CLIP-I / CLIP-T evaluation"),
        "eval-dino": (models_dir / "eval" / "dino-vits16", "DINO evaluation"),
    }
    for name, (folder, use) in hf_folders.items():
        if hf_model_present(folder):
            report.add(name, folder, OK, use)
        else:
            report.add(name, folder, WARN, f"missing (needed for {use}); bash download_checkpoint.sh --only "
                                           f"{name.split('-')[0]}")
    upscalers = sorted((models_dir / "upscaler").glob("*.pth")) if (models_dir / "upscaler").is_dir() else []
    for path in upscalers:
        try:
            report.add("upscaler", path, OK, f"{len(tensor_shapes(path))} tensors (ESRGAN-family, via spandrel)")
        except ConfigError as err:
            report.fail("upscaler", path, err)
