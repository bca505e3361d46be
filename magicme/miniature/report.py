"""docs/miniature.md and its grid image from the measured results; every statement about an effect is computed
from the numbers (a difference is called an effect only when it exceeds two binomial standard errors)."""

import math
import platform
from datetime import datetime, timezone
from pathlib import Path

from PIL import Image, ImageDraw

from magicme.miniature.ablations import Results
from magicme.video_io import atomic_path, to_uint8

MAX_IMAGE_BYTES = 300_000


def machine() -> str:
    import torch

    return (f"{platform.machine()} CPU, {__import__('os').cpu_count()} cores visible, torch threads "
            f"{torch.get_num_threads()}, Python {platform.python_version()}, torch {torch.__version__}")


def differs(a: float, b: float, n: int) -> bool:
    """|a − b| beyond two standard errors of a difference of two rates over n samples each."""
    p = (a + b) / 2
    se = math.sqrt(max(2 * p * (1 - p) / n, 1e-12))
    return abs(a - b) > 2 * se


def pct(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:.0f}%"


def grid_image(results: Results, path: Path, tile: int = 32) -> Path | None:
    """Rows of first frames (identity and mask conditions) and whole γ clips; None if it would exceed the limit."""
    rows = []
    for label, videos in results.examples.items():
        if label.startswith("gamma/"):
            frames = [f for f in videos[0]]
        else:
            frames = [v[0] for v in videos[:8]]
        rows.append((label, frames))
    if not rows:
        return None
    width = 120 + tile * max(len(f) for _, f in rows)
    image = Image.new("RGB", (width, tile * len(rows)), "white")
    draw = ImageDraw.Draw(image)
    for r, (label, frames) in enumerate(rows):
        draw.text((2, r * tile + tile // 2 - 6), label.replace("gamma/", "gamma = "), fill="black")
        for c, frame in enumerate(frames):
            image.paste(Image.fromarray(to_uint8(frame)).resize((tile, tile)), (120 + c * tile, r * tile))
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", optimize=True)
    if path.stat().st_size > MAX_IMAGE_BYTES:
        path.unlink()
        return None
    return path


def identity_section(results: Results) -> list[str]:
    rows = results.tables.get("identity")
    if not rows:
        return ["Not run in this plan."]
    lines = ["| condition (prompt subject) | identity hit (shape and colour) | shape | colour | samples |",
             "|---|---|---|---|---|"]
    for label, r in rows.items():
        lines.append(f"| {label} | {pct(r['identity_hit'])} | {pct(r['shape_hit'])} | {pct(r['colour_hit'])} "
                     f"| {r['n']} |")
    learned, word, rand = (rows[k]["identity_hit"] for k in ("learned tokens", "class word only", "random tokens"))
    n = rows["learned tokens"]["n"]
    lines += ["", f"Learned tokens vs class word: {pct(learned)} vs {pct(word)} — "
                  f"{'an effect' if differs(learned, word, n) else 'no clear effect'} (two standard errors, "
                  f"n = {n} each); vs random tokens: {pct(learned)} vs {pct(rand)} — "
                  f"{'an effect' if differs(learned, rand, n) else 'no clear effect'}."]
    return lines


def mask_section(results: Results) -> list[str]:
    rows = results.tables.get("mask")
    if not rows:
        return ["Not run in this plan."]
    photo = results.plan["photo_background"]
    lines = [f"| loss | prompt's background shown | photos' background ({photo}) shown | {photo} shown when the prompt "
             f"names no background | identity hit | samples (named / unnamed) |", "|---|---|---|---|---|---|"]
    for label, r in rows.items():
        lines.append(f"| {label} | {pct(r['prompt_background'])} | {pct(r['photo_background'])} | "
                     f"{pct(r['photo_background_unprompted'])} | {pct(r['identity_hit'])} | {r['n']} / "
                     f"{r['n_unprompted']} |")
    masked, whole = rows["masked loss"], rows["whole-photo loss"]
    for key, what in (("photo_background", "leak into prompts naming another background"),
                      ("photo_background_unprompted", "return when no background is named")):
        n = masked["n"] if key == "photo_background" else masked["n_unprompted"]
        verdict = "an effect" if differs(masked[key], whole[key], n) else "no clear effect"
        lines.append(f"- {photo} {what}: masked {pct(masked[key])}, whole photo {pct(whole[key])} — {verdict}.")
    return lines


def gamma_section(results: Results) -> list[str]:
    rows = results.tables.get("gamma")
    if not rows:
        return ["Not run in this plan."]
    lines = ["| γ | object-mask IoU, consecutive frames | colour drift (RGB distance) | mean pixel change | "
             "identity hit | samples |", "|---|---|---|---|---|---|"]
    for gamma, r in rows.items():
        lines.append(f"| {gamma} | {r['iou']:.3f} | {r['colour_drift']:.4f} | {r['pixel_change']:.4f} | "
                     f"{pct(r['identity_hit'])} | {r['n']} |")
    return lines


def denoising_section(results: Results) -> list[str]:
    rows = results.tables.get("denoising")
    if not rows:
        return ["Not run in this plan."]
    lines = ["| prompt subject | photos: object | photos: background | unseen: object | unseen: background |",
             "|---|---|---|---|---|"]
    for label, r in rows.items():
        lines.append(f"| {label} | {r['photos_object']:.4f} | {r['photos_background']:.4f} | "
                     f"{r['unseen_object']:.4f} | {r['unseen_background']:.4f} |")
    first = next(iter(rows.values()))
    lines += ["", f"Pictures: {first['photos_n']} photos, {first['unseen_n']} unseen renders; "
                  f"{results.plan['denoise_draws']} (timestep, noise) draws each."]
    return lines


def write_report(path: Path, results: Results, bundle: dict, seconds: float, command: str) -> None:
    """The whole docs page: settings, machine, runtimes, the three tables and the grid image."""
    plan, budget, world = results.plan, bundle["budget"], bundle["world"]
    image = grid_image(results, path.with_suffix(".png"))
    acc = bundle["classifier_accuracy"]
    shape, colour = world["held_out"][0]
    seeds = f"{plan['seed']} … {plan['seed'] + plan['samples'] - 1}"
    lines = [
        "# The miniature world: ID tokens, the masked loss and the 3D prior, measured",
        "",
        f"Generated by `{command}` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {machine()}. "
        f"Total runtime of this command: {seconds / 60:.1f} min (pretraining, when it was built: "
        f"{bundle['pretraining_seconds'] / 60:.1f} min in the process that finished it — a resumed build counts "
        "only its own part; "
        + ", ".join(f"{k} {v:.0f} s" for k, v in results.seconds.items()) + ").",
        "",
        "Every figure below was measured by this command on models trained on this machine; nothing is copied "
        "from elsewhere. Design, and what the numbers can and cannot say: see the end of the page.",
        "",
        "## The world and its models",
        "",
        f"64×64 pictures of one shape ({', '.join(world['shapes'])}) of one colour ({', '.join(world['colours'])}) "
        f"on a background ({', '.join(world['backgrounds'])}); captions `a photo of a <colour> <shape> on "
        "<background>` (15% without the background, 10% empty in pretraining). Clips of "
        f"{budget['frames']} frames move the shape along a straight, bouncing path. The pair "
        f"**{colour} {shape}** never appears in pretraining: it is the identity.",
        "",
        f"Pretraining (seed {budget['seed']}): VAE {budget['vae_steps']} steps × {budget['vae_batch']} pictures; "
        f"text encoder + UNet {budget['image_steps']} × {budget['image_batch']}; motion module "
        f"{budget['motion_steps']} × {budget['motion_batch']} clips; classifier {budget['classifier_steps']} × "
        f"{budget['classifier_batch']}. Written to `models/miniature/` in the real formats and loaded by "
        "`sample.py` / `train.py` with `configs/miniature/*.yaml`.",
        "",
        "Classifier accuracy on 512 held-out renders (all pairs, identity included; clean / through the VAE): "
        f"shape {pct(acc['clean_shape'])} / {pct(acc['vae_shape'])}, colour {pct(acc['clean_colour'])} / "
        f"{pct(acc['vae_colour'])}, background {pct(acc['clean_background'])} / {pct(acc['vae_background'])}.",
        "",
        f"Identity tokens: {plan['photos']} renders of the {colour} {shape} on {plan['photo_background']}, "
        f"`train.py` with `configs/miniature/train.yaml`, {plan['train_steps']} steps, seed {plan['seed']}. "
        f"Sampling: DDIM {plan['steps']} steps, guidance {plan['guidance_scale']}, sample i has seed "
        f"{plan['seed']} + i (seeds {seeds}) and the i-th background in turn.",
        "",
        "## Identity learning",
        "",
        f"Prompt `a photo of a <subject> on <background>`, {plan['frames']} frames, γ = {plan['gamma']}; the "
        "classifier reads each video (logits averaged over frames).",
        "",
        *identity_section(results),
        "",
        "## Masked vs whole-photo loss",
        "",
        f"The same photos, all on {plan['photo_background']}; whole-photo loss = `use_orig_img_rate: 1.0`. "
        f"Prompts name one of the other backgrounds in turn, or none (seeds {plan['seed'] + 10000} …).",
        "",
        *mask_section(results),
        "",
        "## The training objective, on the photos and on unseen pictures",
        "",
        "Mean squared ε-prediction error of the sampling UNet (one-frame clips) inside the object's mask and "
        f"outside it, at fixed (timestep ∈ [50, 950), noise) draws (seed {plan['seed']}); lower is better. "
        f"*Photos*: the identity's {plan['photos']} training photos (all on {plan['photo_background']}), captioned "
        "as in training (`a photo of a <subject>`, no background). *Unseen*: fresh renders of the identity on the "
        "other backgrounds, each captioned with its background. The CI test (tests/test_miniature.py) asserts on "
        "the photos' columns.",
        "",
        *denoising_section(results),
        "",
        "## 3D noise prior",
        "",
        f"Learned tokens, {plan['gamma_frames']} frames, the same seeds and prompts for every γ; object masks are "
        "the pixels far from each frame's border colour.",
        "",
        *gamma_section(results),
        "",
        "## Not done",
        "",
        "- The Face/Tiled VCD analogue (optional in the issue): not built for lack of time.",
        "",
        "## Design, and what the numbers can and cannot say",
        "",
        "- **Models.** VAE: SD's four levels (×8; 64² → 8×8×4), 16/16/32/32 channels. UNet: SD1.5's block types "
        "at two levels of 32/64 channels, one resnet per block. Text encoder: CLIP, 2 layers, width 64, one token "
        "per world word (BPE merges over the character vocabulary of the tiny bundle). Motion module: AnimateDiff "
        "v3 layout (no mid block), output projections zero-initialised as AnimateDiff does, trained with the "
        "image weights frozen and computed as sampling computes it (`animatediff_numerics: original`). Written "
        "by the tiny bundle's writers (`save_sd_folder`, `save_original_motion_module`).",
        "- **Masks.** train.py masks the loss with CLIPSeg's segmentation, read from its mask cache when present. "
        "No CLIPSeg can be trained here, so the world's exact masks are written into that cache under the key "
        "train.py computes; `models/miniature/clipseg` is a random-weight stand-in that is fingerprinted, never "
        "run. The whole-photo loss is the trainer's own `use_orig_img_rate: 1.0`.",
        "- **Measuring.** A CNN trained on renders of every pair (the identity included, half of them through the "
        "VAE) reads each generated video; its accuracy above bounds how far its readings can be trusted. An "
        "effect is called one only when the difference exceeds two binomial standard errors; with 50 samples per "
        "condition that is about ±20 points near 50%.",
        "- **Scale.** Everything is tiny and briefly trained: the figures say whether the mechanisms act in the "
        "direction the paper claims on a world this simple, not how large the effects are on real models.",
        "",
    ]
    if image is not None:
        lines[4:4] = [f"![grid]({image.name})", "",
                      "Grid: first frames of eight samples per condition; whole clips for γ rows.", ""]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines))
