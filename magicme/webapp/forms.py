"""What the web app's forms mean: a form's fields → the same sampling or training config the CLIs read.

Pure and import-light (no torch, no gradio): every page action builds its config here, from the config file the app
was started with plus the form's values, through the CLIs' own loaders and checks (`load_sample_config` +
`check_settings`, `load_train_config`), so a run started from the page is a run `sample.py` / `train.py` would do,
and its saved config.yaml reproduces it. Bad input is one `ConfigError` whose text the page shows.
"""

import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from magicme.errors import ConfigError
from magicme.images import IMAGE_SUFFIXES, read_image
from magicme.limits import MAX_UPLOAD_MB
from magicme.prompts import ID_PLACEHOLDER
from magicme.rundir import move_aside
from magicme.schema import check_settings, load_sample_config

NO_IDENTITY = "(none)"
# The three buttons of the original Magic-Me demo and the stages each runs.
BUTTONS = {"T2V": ["t2v"], "T2V + Face": ["t2v", "face"], "T2V + Face + Tiled": ["t2v", "face", "tiled"]}
# The original Magic-Me README's five example prompts, its identities replaced by {id} (the chosen identity).
PRESET_PROMPTS = [
    f"a photo of {ID_PLACEHOLDER} in superman costume in the outer space, stars in the background.",
    f"a photo of {ID_PLACEHOLDER}, desert, a striking tableau forms around a solitary figure who stoically stands "
    "against the whipping winds and stinging sands. Clad in a worn, tattered, dark brown cloak, with hood pulled low, "
    "only hinting at the determined visage beneath - this individual embodies fortitude and tenacity.",
    f"a photo of {ID_PLACEHOLDER}, clad in exquisite hybrid armor, studded with iridescent gemstones, Cherry blossoms "
    "sway gently in the breeze, lithesome figure against a softly blurred backdrop. style of Gerald Parel, "
    "ward-winning, professional, highly detailed.",
    f"a photo of {ID_PLACEHOLDER} walking on the street, B&W, city, captured on a 35mm camera, black and white, "
    "classic film. inside Film Still, film grain, Movie Still, Film Still, Cinematic, Cinematic Shot, Cinematic "
    "Lighting",
    f"a photo of {ID_PLACEHOLDER}, amazing quality, knight, holding a sword, dazzling ,transparent ,polishing, waving "
    "sword, gold armor, glowing armor, glowing eyes, full armor, shine armor, dazzling armor, masterpiece, best "
    "quality, hyper detailed, ultra detailed, UHD, perfect anatomy, (in castle:1.2).",
]
IDENTITY_NAME = re.compile(r"[a-z0-9_\-]+")  # what train.py accepts as a name (it becomes a file and a token)
RECOMMENDED_PHOTOS = (5, 10)


@dataclass
class VideoForm:
    """The fields the Generate and Edit tabs share (as the page sends them: numbers may be floats or empty)."""

    identity: str | None
    class_word: str
    prompt: str
    negative_prompt: str
    seed: float | None
    random_seed: bool
    steps: float | None
    guidance_scale: float | None
    gamma: float | None
    frames: float | None
    width: float | None
    height: float | None


def whole(value, key: str) -> int:
    """A form number that must be an integer (the page's number boxes send floats, or None when empty)."""
    if value is None or value == "":
        raise ConfigError(f"{key}: empty; enter a whole number")
    number = float(value)
    if not number.is_integer():
        raise ConfigError(f"{key}: {value} is not a whole number; enter one")
    return int(number)


def real(value, key: str) -> float:
    if value is None or value == "":
        raise ConfigError(f"{key}: empty; enter a number")
    return float(value)


def chosen_identity(identity: str | None) -> str | None:
    return None if identity in (None, "", NO_IDENTITY) else identity


def video_overrides(form: VideoForm) -> dict:
    """The form's values as a config layer over the app's config file (the keys sample.py reads)."""
    if not form.prompt or not form.prompt.strip():
        raise ConfigError("prompt: empty; write a prompt (or pick one of the examples)")
    return {
        "prompts": [form.prompt.strip()],
        "negative_prompt": form.negative_prompt or "",
        "seeds": [-1 if form.random_seed else whole(form.seed, "seed")],
        "steps": whole(form.steps, "steps"),
        "guidance_scale": real(form.guidance_scale, "guidance_scale"),
        "gamma": real(form.gamma, "gamma"),
        "frames": whole(form.frames, "frames"),
        "width": whole(form.width, "width"),
        "height": whole(form.height, "height"),
    }


def video_config(config_path: Path | str, form: VideoForm, stages: list[str], extra: dict | None = None) -> DictConfig:
    """The sampling config of one click: the app's config file ← the form (identity as a one-identity grid, so
    `{id}` becomes `embedding:NAME <class word>`), checked as sample.py checks it before any model loads."""
    cfg = load_sample_config(config_path, {**video_overrides(form), "stages": stages, **(extra or {})})
    identity = chosen_identity(form.identity)
    cfg.identities = [identity] if identity else None
    word = (form.class_word or "").strip()
    cfg.class_words = {identity: word} if identity and word else {}
    check_settings(cfg)
    return cfg


def generate_config(config_path: Path | str, form: VideoForm, button: str) -> DictConfig:
    """T2V / T2V + Face / T2V + Face + Tiled: the stages of the button pressed."""
    if button not in BUTTONS:
        raise ConfigError(f"button: {button!r} is not one of {', '.join(BUTTONS)}")
    return video_config(config_path, form, BUTTONS[button])


def edit_config(config_path: Path | str, form: VideoForm, video: str | None, strength) -> DictConfig:
    """Re-render an uploaded clip with the identity (the edit stage: `input_video` at `input_strength`)."""
    if not video:
        raise ConfigError("video: no clip uploaded; upload an MP4 or GIF to edit")
    check_upload_size(video, "video")
    return video_config(config_path, form, ["edit"], {"input_video": str(video),
                                                      "input_strength": real(strength, "strength")})


def check_identity_name(name: str | None) -> str:
    name = (name or "").strip()
    if not IDENTITY_NAME.fullmatch(name):
        raise ConfigError(f"name: {name!r} must be lower-case letters, digits, '_' or '-' (it becomes the identity's "
                          "file and token name), e.g. ann")
    return name


def check_upload_size(path: Path | str, key: str) -> None:
    """An uploaded file larger than MAX_UPLOAD_MB is refused (the page's own limit stops it earlier: app.py)."""
    size = Path(path).stat().st_size
    if size > MAX_UPLOAD_MB * 1024 * 1024:
        raise ConfigError(f"{key}: {Path(path).name} is {size / 2**20:.0f} MB, more than {MAX_UPLOAD_MB} MB; upload a "
                          "smaller file")


def check_photos(paths: list[str] | None) -> list[Path]:
    """The uploaded photos: at least one, each with an image suffix, at most MAX_UPLOAD_MB, and each decoded (a text
    file named `.png`, a broken image or a decompression bomb is an error) before anything is stored."""
    photos = [Path(p) for p in paths or []]
    if not photos:
        raise ConfigError(f"photos: none uploaded; upload {RECOMMENDED_PHOTOS[0]}-{RECOMMENDED_PHOTOS[1]} photos of "
                          "the person")
    for photo in photos:
        if photo.suffix.lower() not in IMAGE_SUFFIXES:
            raise ConfigError(f"photos: {photo.name} is not an image ({', '.join(IMAGE_SUFFIXES)}); upload photos "
                              "only")
        check_upload_size(photo, "photos")
    for photo in photos:
        try:
            read_image(photo, "photo")
        except ConfigError as err:
            raise ConfigError(f"photos: {photo.name}: {str(err).removeprefix(f'{photo}: ')}") from None
    return photos


def photo_advice(count: int) -> str:
    """A note (not an error) when the photo count is outside what the paper used."""
    low, high = RECOMMENDED_PHOTOS
    return "" if low <= count <= high else f"{count} photos: the method was made for {low}-{high}; results may vary"


def store_photos(photos: list[Path], folder: Path) -> Path:
    """Copy the uploads (checked: `check_photos`) into the identity's photo folder (its `images_dir`), so a resumed
    training finds the same photos. The new folder is written beside it and renamed into place whole; a different
    earlier upload there is moved aside to `<name>.old-<time>`, never deleted."""
    names = [f"{i:02d}-{photo.name}" for i, photo in enumerate(photos)]
    if folder.is_dir() and sorted(p.name for p in folder.iterdir()) == sorted(names) and all(
            (folder / name).read_bytes() == photo.read_bytes() for name, photo in zip(names, photos)):
        return folder  # the same upload again (Show masks, then Train)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    for name, photo in zip(names, photos):
        shutil.copyfile(photo, staging / name)
    if folder.exists():
        move_aside(folder)
    staging.rename(folder)
    return folder


def train_overrides(name: str, class_word: str | None, steps, images_dir: Path,
                    embeddings_dir: str | None) -> dict:
    """The training form as a layer over the app's training config; the finished `<name>.pt` goes to the sampling
    config's `model.embeddings_dir`, where the Generate tab lists identities."""
    word = (class_word or "").strip()
    if not word:
        raise ConfigError("class_word: empty; write what the person is (man, woman, boy, ...)")
    if embeddings_dir is None:
        raise ConfigError("model.embeddings_dir: not set in the app's sampling config; set it so trained identities "
                          "can be used")
    return {"name": name, "images_dir": str(images_dir), "class_word": word, "max_steps": whole(steps, "steps"),
            "copy_to_embeddings_dir": str(embeddings_dir)}


def check_clip_length(frames: int, seconds: float, path: str, max_seconds: float) -> None:
    """An uploaded clip longer than the app accepts is refused before it is decoded."""
    if seconds > max_seconds:
        raise ConfigError(f"video: {Path(path).name} is {seconds:.1f} s long ({frames} frames); this app edits clips "
                          f"up to {max_seconds:g} s; trim it")
