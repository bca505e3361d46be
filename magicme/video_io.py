"""Reading and writing videos. In memory a video is float32 (frames, height, width, 3) in [0, 1]."""

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from PIL import Image

from magicme.errors import ConfigError
from magicme.images import IMAGE_SUFFIXES, image_files, read_image


TEMP_MARK = ".magicme-tmp"  # in every temp name atomic_path makes, so cleanup can never mistake a user's file for one
# `.<stem>.<8 random characters of mkstemp><TEMP_MARK><suffix>`: the exact names atomic_path makes, and no other
TEMP_NAME = re.compile(r"\..*\.[a-z0-9_]{8}" + re.escape(TEMP_MARK) + r"(\.[^.]+)?")


def is_temp_file(name: str) -> bool:
    """Whether a file name is one of atomic_path's temporary files (left behind by a killed write)."""
    return TEMP_NAME.fullmatch(name) is not None


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    A crash or error mid-write never leaves a half-written file under the final name. The temporary file keeps the
    final suffix (writers pick their format by it) and carries TEMP_MARK (`is_temp_file`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=TEMP_MARK + path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o666 & ~umask)  # mkstemp makes files private (0600); results are meant to be shared
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def to_uint8(video: np.ndarray) -> np.ndarray:
    """[0, 1] floats → uint8 with rounding (not truncation), so a round trip changes values by at most 1/255."""
    return (np.clip(video, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def write_video(stem: Path, video: np.ndarray, fps: int, formats: tuple[str, ...] = ("mp4", "gif")) -> dict[str, str]:
    """Write `video` as `stem.mp4` (H.264, yuv420p, reproducible bytes) and/or `stem.gif`; returns {format: file
    name}."""
    frames = to_uint8(video)
    written = {}
    for fmt in formats:
        target = stem.with_name(f"{stem.name}.{fmt}")
        with atomic_path(target) as tmp:
            if fmt == "mp4":
                write_mp4(tmp, frames, fps)
            elif fmt == "gif":
                pil = [Image.fromarray(f) for f in frames]
                pil[0].save(tmp, format="GIF", save_all=True, append_images=pil[1:],
                            duration=round(1000 / fps), loop=0)
            else:
                raise ValueError(f"unknown video format {fmt!r}")
        written[fmt] = target.name
    return written


# x264's macroblock-tree rate control gave different bytes for the same frames from one encode to the next; without
# it an encode is reproducible (for a given thread count, which x264 derives from the CPU count).
X264_PARAMS = "mbtree=0"


def write_mp4(path: Path, frames: np.ndarray, fps: int) -> None:
    """uint8 frames as H.264 (yuv420p) in an MP4, the same bytes for the same frames."""
    import av

    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps, options={"x264-params": X264_PARAMS})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def write_frames(folder: Path, video: np.ndarray) -> str:
    """Write every frame as `folder/frame-XXXX.png` (lossless, for inspection or further editing)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(to_uint8(video)):
        with atomic_path(folder / f"frame-{i:04d}.png") as tmp:
            Image.fromarray(frame).save(tmp, format="PNG")
    return folder.name


def read_video(path: Path | str) -> np.ndarray:
    """Read an MP4/GIF/… file or a folder of frame images into float32 (F, H, W, 3) in [0, 1].

    decord is used when installed (fast seeking on long files), PyAV otherwise.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: video not found; give an MP4/GIF file or a folder of frames")
    if path.is_dir():
        return _read_frame_folder(path)
    try:
        frames = _read_with_decord(path)
    except ImportError:
        frames = None
    try:
        if frames is None and path.suffix.lower() == ".gif":
            frames = iio.imread(path, plugin="pillow", index=None)
        elif frames is None:
            frames = _read_with_pyav(path)
    except Exception as err:  # imageio raises many types for corrupt input
        raise ConfigError(f"{path}: cannot decode this video ({type(err).__name__}: {err})") from err
    frames = np.asarray(frames)
    if frames.ndim == 3:  # a single image or one frame
        frames = frames[None]
    if frames.shape[-1] == 4:
        frames = frames[..., :3]
    return frames.astype(np.float32) / 255.0


def _read_frame_folder(path: Path) -> np.ndarray:
    """The images of a frame folder in name order; read like every other image (one suffix set, a pixel limit)."""
    files = image_files(path)
    if not files:
        raise ConfigError(f"{path}: folder holds no frame images ({', '.join(IMAGE_SUFFIXES)})")
    frames = [read_image(f, "frame image") for f in files]
    if len({f.shape for f in frames}) != 1:
        raise ConfigError(f"{path}: frame images differ in size; all frames must have the same size")
    return np.stack(frames)


def _read_with_pyav(path: Path) -> np.ndarray:
    """Every frame as RGB, decoded by PyAV itself (imageio's PyAV plugin runs a full garbage collection per file
    closed: a third of a second each in a process holding the models, minutes for the grid of a large run)."""
    import av

    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def _read_with_decord(path: Path) -> np.ndarray | None:
    import decord

    if path.suffix.lower() == ".gif":
        return None
    try:
        reader = decord.VideoReader(str(path))
        return reader.get_batch(list(range(len(reader)))).asnumpy()
    except decord.DECORDError:
        return None


def prepare_input_video(path: str, frames: int, height: int, width: int, key: str = "input_video") -> np.ndarray:
    """The first `frames` frames of an input video, resized to cover height × width and centre-cropped; `key` names
    the setting in the error when it has fewer frames."""
    video = read_video(path)
    if len(video) < frames:
        raise ConfigError(f"{key}: {path} has {len(video)} frames; the config asks for {frames} "
                          "(lower `frames`)")
    return fit_video(video[:frames], height, width)


def fit_video(video: np.ndarray, height: int, width: int) -> np.ndarray:
    """(F, h, w, 3) frames resized to cover height × width and centre-cropped (input clips, control clips,
    SparseCtrl keyframes)."""
    from magicme.vcd.resize import resize_video

    h, w = video.shape[1:3]
    scale = max(height / h, width / w)
    rh, rw = max(height, round(h * scale)), max(width, round(w * scale))
    video = resize_video(video, rh, rw)
    top, left = (rh - height) // 2, (rw - width) // 2
    return video[:, top:top + height, left:left + width]
