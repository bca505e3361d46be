"""Model doctor: does every file a sampling config needs exist, have the expected format and version, and fit the rest?

Everything is read from file headers and keys — safetensors headers, `.ckpt` pickles memory-mapped with
`weights_only=True` — so checking a 2 GB checkpoint takes a second and no GPU. What is checked:

- base: a diffusers folder (configs + weights per component) or a single-file LDM checkpoint (SD1.5 family, not
  SDXL/SD2), whose shapes must match the `base_config` folder it borrows configs and tokenizer from; a file without
  VAE weights needs `model.vae`;
- vae: a diffusers folder or single file with 4 latent channels;
- motion module: original AnimateDiff layout (v1/v2/v3 read from keys) or a MotionAdapter folder, with the base
  UNet's channel widths; MotionLoRAs must target weights that module has;
- embeddings: each identity's vector width equals the text encoder's hidden size;
- stages: the CLIPSeg model of a clipseg Face VCD stage, the upscaler file of a Tiled VCD stage;
- optional extras under models/ (CLIPSeg, upscalers, evaluation models): reported as warnings when missing.
"""

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers.loaders.single_file_utils import convert_animatediff_checkpoint_to_diffusers
from omegaconf import DictConfig

from magicme.checkpoint_io import load_checkpoint
from magicme.embeddings import find_embeddings, load_embedding_file
from magicme.errors import ConfigError
from magicme.motion_module import inspect_motion_module, lora_targets

UNET_KEY = "model.diffusion_model."
VAE_KEYS = ("first_stage_model.", "vae.")
TEXT_TOKEN_KEY = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"
CROSS_ATTN_KEY = UNET_KEY + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
WEIGHT_SUFFIXES = (".safetensors", ".bin")
OK, WARN, FAIL = "ok", "warn", "FAIL"


@dataclass
class Check:
    item: str
    path: str
    status: str  # ok | warn | FAIL
    detail: str


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    def add(self, item: str, path, status: str, detail: str) -> None:
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


def safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from a safetensors header (8-byte little-endian length, then JSON), reading nothing else."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > 100_000_000:
            raise ValueError(f"header length {length} is implausible")
        header = json.loads(f.read(length))
    return {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}


def tensor_shapes(path: Path | str) -> dict[str, tuple[int, ...]]:
    """Shapes of the tensors in a `.safetensors` file or a `.ckpt`/`.pt`/`.pth`/`.bin` pickle (tensors only,
    `weights_only`, memory-mapped where the file allows); a `{"state_dict": ...}` wrapper is unwrapped."""
    path = Path(path)
    if path.suffix != ".safetensors":
        state = load_checkpoint(path)
    elif not path.is_file():
        raise ConfigError(f"{path}: file not found")
    else:
        try:
            return safetensors_shapes(path)
        except Exception as err:  # a truncated or corrupt header raises many types
            raise ConfigError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError(f"{path}: not a state dict of tensors")
    return {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}


def as_meta(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Shape-only tensors, so key/shape logic written for state dicts (motion-module inspection) runs on headers."""
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: unreadable JSON ({err})") from err


def weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file())


@dataclass
class BaseShape:
    """What the rest must fit: text width, UNet widths, latent channels."""
    text_width: int | None = None
    unet_channels: tuple[int, ...] | None = None
    cross_attention: int | None = None
    has_vae: bool = True


def check_diffusers_folder(report: Report, item: str, folder: Path, need_weights: bool) -> BaseShape:
    """An SD1.5 diffusers folder: component configs (+ weights when `need_weights`) and a tokenizer."""
    shape = BaseShape()
    for part in ("unet", "vae", "text_encoder"):
        config = folder / part / "config.json"
        if not config.is_file():
            report.add(item, folder / part, FAIL, "config.json missing: not a diffusers SD folder")
            continue
        if need_weights:
            files = weight_files(folder / part)
            if not files:
                report.add(item, folder / part, FAIL, "no weights (*.safetensors / *.bin); download incomplete?")
                continue
            try:
                if files[0].suffix == ".safetensors":
                    safetensors_shapes(files[0])
            except (OSError, ValueError, struct.error) as err:
                report.add(item, files[0], FAIL, f"corrupt safetensors header ({err})")
    tokenizer = folder / "tokenizer"
    if not ((tokenizer / "vocab.json").is_file() and (tokenizer / "merges.txt").is_file()):
        report.add(item, tokenizer, FAIL, "tokenizer (vocab.json, merges.txt) missing")
    unet = folder / "unet" / "config.json"
    text = folder / "text_encoder" / "config.json"
    if unet.is_file():
        cfg = read_json(unet)
        shape.unet_channels = tuple(cfg.get("block_out_channels", ()))
        shape.cross_attention = cfg.get("cross_attention_dim")
    if text.is_file():
        shape.text_width = read_json(text).get("hidden_size")
    return shape


def check_base(report: Report, model: DictConfig) -> BaseShape:
    base = Path(model.base)
    if base.is_dir():
        before = len(report.checks)
        shape = check_diffusers_folder(report, "model.base", base, need_weights=True)
        if len(report.checks) == before:
            report.add("model.base", base, OK, f"diffusers folder; UNet {shape.unet_channels}, "
                                               f"text width {shape.text_width}")
        return shape
    if not base.is_file():
        group = "base" if base.suffix in (".safetensors", ".ckpt") else "sd15"
        report.add("model.base", base, FAIL, f"not found; run: bash download_checkpoint.sh --only {group}")
        return BaseShape()
    try:
        shapes = tensor_shapes(base)
    except ConfigError as err:
        report.add("model.base", base, FAIL, str(err).removeprefix(f"{base}: "))
        return BaseShape()
    if any(k.startswith("conditioner.embedders.") for k in shapes):
        report.add("model.base", base, FAIL, "an SDXL checkpoint; magicme runs SD1.5-family models")
        return BaseShape()
    if UNET_KEY + "input_blocks.0.0.weight" not in shapes or TEXT_TOKEN_KEY not in shapes:
        report.add("model.base", base, FAIL, "not an SD1.5 single-file checkpoint (no 'model.diffusion_model.' "
                                             "UNet or CLIP text encoder keys)")
        return BaseShape()
    file_shape = BaseShape(text_width=shapes[TEXT_TOKEN_KEY][1], cross_attention=shapes.get(CROSS_ATTN_KEY, (0, 0))[1],
                           has_vae=any(k.startswith(VAE_KEYS) for k in shapes))
    if file_shape.cross_attention == 1024:
        report.add("model.base", base, FAIL, "an SD2 checkpoint (cross-attention 1024); magicme runs SD1.5 models")
        return file_shape
    vae_note = "with VAE" if file_shape.has_vae else "no VAE weights (noVAE)"
    report.add("model.base", base, OK, f"single-file LDM checkpoint, text width {file_shape.text_width}, {vae_note}")
    config = Path(str(model.get("base_config")))
    if model.get("base_config") is None or not config.is_dir():
        report.add("model.base_config", model.get("base_config"), FAIL,
                   "a single-file base needs a diffusers SD1.5 folder (configs + tokenizer); "
                   "run: bash download_checkpoint.sh --only sd15")
        return file_shape
    before = len(report.checks)
    cfg_shape = check_diffusers_folder(report, "model.base_config", config, need_weights=False)
    mismatches = []
    unet_in = shapes[UNET_KEY + "input_blocks.0.0.weight"][0]
    if cfg_shape.unet_channels and cfg_shape.unet_channels[0] != unet_in:
        mismatches.append(f"UNet width {unet_in} vs config {cfg_shape.unet_channels[0]}")
    if cfg_shape.text_width and cfg_shape.text_width != file_shape.text_width:
        mismatches.append(f"text width {file_shape.text_width} vs config {cfg_shape.text_width}")
    if cfg_shape.cross_attention and cfg_shape.cross_attention != file_shape.cross_attention:
        mismatches.append(f"cross-attention {file_shape.cross_attention} vs config {cfg_shape.cross_attention}")
    if mismatches:
        report.add("model.base_config", config, FAIL, f"does not fit {base.name}: {'; '.join(mismatches)}")
    elif len(report.checks) == before:
        report.add("model.base_config", config, OK, f"configs + tokenizer fit the file (UNet "
                                                    f"{cfg_shape.unet_channels})")
    file_shape.unet_channels = cfg_shape.unet_channels
    return file_shape


def check_vae(report: Report, model: DictConfig, base: BaseShape) -> None:
    if model.get("vae") is None:
        if not base.has_vae:
            report.add("model.vae", None, FAIL, "the base file has no VAE weights; set model.vae (e.g. "
                                                "models/vae/sd-vae-ft-mse; bash download_checkpoint.sh --only vae)")
        return
    vae = Path(str(model.vae))
    if vae.is_dir():
        folder = vae / "vae" if (vae / "vae" / "config.json").is_file() else vae
        if not (folder / "config.json").is_file() or not weight_files(folder):
            report.add("model.vae", vae, FAIL, "needs config.json and weights (diffusers AutoencoderKL folder)")
            return
        latent = read_json(folder / "config.json").get("latent_channels", 4)
    elif vae.is_file():
        try:
            shapes = tensor_shapes(vae)
        except ConfigError as err:
            report.add("model.vae", vae, FAIL, str(err).removeprefix(f"{vae}: "))
            return
        quant = [s for k, s in shapes.items() if k.endswith("quant_conv.weight") and "post_" not in k]
        if not quant:
            report.add("model.vae", vae, FAIL, "not a VAE file (no quant_conv weights)")
            return
        latent = quant[0][0] // 2
    else:
        report.add("model.vae", vae, FAIL, "not found; run: bash download_checkpoint.sh --only vae")
        return
    status = OK if latent == 4 else FAIL
    report.add("model.vae", vae, status, f"{latent} latent channels" + ("" if status == OK else "; SD1.5 needs 4"))


def check_motion(report: Report, model: DictConfig, base: BaseShape) -> set[str] | None:
    """Returns the motion module's diffusers weight names (for the MotionLoRA check), None if unknown."""
    mm = Path(str(model.motion_module))
    if mm.is_dir():
        if not (mm / "config.json").is_file():
            report.add("model.motion_module", mm, FAIL, "a folder without config.json (not a MotionAdapter)")
            return None
        cfg = read_json(mm / "config.json")
        channels = tuple(cfg.get("block_out_channels", ()))
        version, weights = "diffusers MotionAdapter", None
    elif mm.is_file():
        try:
            shapes = tensor_shapes(mm)
            info = inspect_motion_module(as_meta(shapes), mm)
        except ConfigError as err:
            report.add("model.motion_module", mm, FAIL, str(err).removeprefix(f"{mm}: "))
            return None
        channels = info.block_out_channels
        version = f"AnimateDiff {info.version}, {info.max_seq_length} frames max"
        weights = set(convert_animatediff_checkpoint_to_diffusers(dict.fromkeys(shapes)))
    else:
        report.add("model.motion_module", mm, FAIL, "not found; run: bash download_checkpoint.sh --only motion")
        return None
    if base.unet_channels and tuple(base.unet_channels) != channels:
        report.add("model.motion_module", mm, FAIL, f"{version}: channels {channels} do not fit the base UNet "
                                                    f"{tuple(base.unet_channels)}")
    else:
        report.add("model.motion_module", mm, OK, f"{version}, channels {channels}")
    return weights


def check_motion_loras(report: Report, model: DictConfig, motion_weights: set[str] | None) -> None:
    for i, lora in enumerate(model.get("motion_loras") or []):
        key, path = f"model.motion_loras[{i}]", Path(str(lora.path))
        try:
            targets = lora_targets(as_meta(tensor_shapes(path)))
        except ConfigError as err:
            report.add(key, path, FAIL, str(err).removeprefix(f"{path}: "))
            continue
        if not targets:
            report.add(key, path, FAIL, "not a MotionLoRA (no '..._lora.down.weight' keys)")
        elif motion_weights is not None and not set(targets) <= motion_weights:
            report.add(key, path, FAIL, "does not fit the motion module; official MotionLoRAs need a v2 module")
        else:
            report.add(key, path, OK, f"MotionLoRA, {len(targets)} weights")


def check_embeddings(report: Report, model: DictConfig, base: BaseShape) -> None:
    folder = model.get("embeddings_dir")
    if folder is None:
        return
    if not Path(folder).is_dir():
        report.add("model.embeddings_dir", folder, WARN, "no such folder (prompts cannot use identities); "
                                                         "bash download_checkpoint.sh --only embeddings")
        return
    files = find_embeddings(folder)
    widths = {}
    for name, path in files.items():
        try:
            vectors = load_embedding_file(path)
        except ConfigError as err:
            report.add("model.embeddings_dir", path, FAIL, str(err).removeprefix(f"{path}: "))
            continue
        if base.text_width and vectors.shape[1] != base.text_width:
            report.add("model.embeddings_dir", path, FAIL, f"identity {name!r} has width {vectors.shape[1]}, the "
                                                           f"text encoder {base.text_width}")
        widths[name] = tuple(vectors.shape)
    if widths:
        shapes = sorted({f"{n}×{w}" for n, w in widths.values()})
        report.add("model.embeddings_dir", folder, OK, f"{len(widths)} identities ({', '.join(shapes)})")
    elif not files:
        report.add("model.embeddings_dir", folder, WARN, "no .pt/.safetensors identities in it")


def hf_model_present(folder: Path) -> bool:
    return (folder / "config.json").is_file() and bool(weight_files(folder))


def check_extras(report: Report, models_dir: Path) -> None:
    """Models outside the `model:` block (training, Face VCD, evaluation, upscaling): reported, never required."""
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
            report.add("upscaler", path, FAIL, str(err).removeprefix(f"{path}: "))


def check_models(model: DictConfig, models_dir: Path | str = "models", extras: bool = True) -> Report:
    """Check a `model:` config block (and, with `extras`, the optional models under `models_dir`)."""
    report = Report()
    base = check_base(report, model)
    check_vae(report, model, base)
    check_motion_loras(report, model, check_motion(report, model, base))
    check_embeddings(report, model, base)
    if extras:
        check_extras(report, Path(models_dir))
    return report


def check_sample_config(cfg: DictConfig, models_dir: Path | str = "models") -> Report:
    """Everything a sampling config needs: its `model:` block, the CLIPSeg model of a clipseg Face VCD stage, the
    upscaler file of a Tiled VCD stage, and the optional extras."""
    stages = set(cfg.get("stages") or [])
    report = check_models(cfg.model, models_dir)
    if "face" in stages and cfg.face.detector == "clipseg":
        folder = Path(str(cfg.face.clipseg_model))
        if hf_model_present(folder):
            report.add("face.clipseg_model", folder, OK, "CLIPSeg for Face VCD")
        else:
            report.add("face.clipseg_model", folder, FAIL, "no CLIPSeg model (config.json + weights); "
                                                           "bash download_checkpoint.sh --only clipseg")
    if "tiled" in stages and cfg.tiled.upscaler != "lanczos":
        path = Path(str(cfg.tiled.upscaler))
        try:
            report.add("tiled.upscaler", path, OK, f"{len(tensor_shapes(path))} tensors")
        except ConfigError as err:
            report.add("tiled.upscaler", path, FAIL, str(err).removeprefix(f"{path}: "))
    return report
