"""The web app's work: sampling and training runs in a worker thread, watched from the page.

A click renders with `run_sampling` into a normal run folder; the page shows each stage's video as soon as its
manifest record appears. Training is `train_identities` with a step hook that reports the loss and stops the run
when the page cancels it (the run stays resumable from its last checkpoint). The loaded pipeline is kept between
clicks while nothing that decides it changes (`PipelineCache`).
"""

import contextvars
import gc
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from magicme import manifest
from magicme.embeddings import find_embeddings, read_class_word
from magicme.errors import ConfigError
from magicme.sampling import load_pipeline, run_sampling

POLL_SECONDS = 0.05  # how often a run folder is checked for new stage videos


class PipelineCache:
    """`run_sampling`'s loader keeping the last pipeline: loaded again only when the model block, the identities'
    files or a loading option change, so a second click costs no model load."""

    def __init__(self):
        self.key: str | None = None
        self.pipe = None
        self.loads = 0

    @staticmethod
    def key_of(cfg: DictConfig, embeddings: dict[str, Path], device) -> str:
        decided = {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
                   for k in ("model", "freeu", "precision", "attention", "vae_slicing", "cpu_offload", "compile",
                             "compile_backend", "fp8")}
        files = sorted((name, str(path), path.stat().st_mtime_ns) for name, path in embeddings.items())
        return OmegaConf.to_yaml({"settings": decided, "device": str(device), "embeddings": [list(f) for f in files]})

    def __call__(self, cfg: DictConfig, embeddings: dict[str, Path], device):
        key = self.key_of(cfg, embeddings, device)
        if key != self.key:
            self.pipe, self.key = None, None
            gc.collect()  # free the old pipeline's memory before the new one loads
            self.pipe = load_pipeline(cfg, embeddings, device)
            self.key, self.loads = key, self.loads + 1
        return self.pipe


def identities(embeddings_dir: str | None) -> dict[str, str]:
    """{identity: its stored class word, or ''} of every embedding file, for the identity dropdowns."""
    try:
        found = find_embeddings(embeddings_dir) if embeddings_dir and Path(embeddings_dir).is_dir() else {}
        return {name: read_class_word(path) or "" for name, path in found.items()}
    except ConfigError:
        return {}


def in_thread(work: Callable[[], object], events: queue.Queue) -> threading.Thread:
    """Run `work` in a thread that reports ("done", result) or ("error", exception) on `events`; the caller's
    context (the page's progress tracker) goes with it."""
    def run():
        try:
            events.put(("done", work()))
        except BaseException as err:  # reported to the page, never raised in a server thread
            events.put(("error", err))

    context = contextvars.copy_context()
    thread = threading.Thread(target=context.run, args=(run,), daemon=True)
    thread.start()
    return thread


@dataclass
class StageVideo:
    stage: str
    path: Path
    frames: int


@dataclass
class SamplingUpdate:
    """What the page shows while a run renders: the stage videos so far; `error` or `finished` at the end."""

    run_dir: Path
    videos: list[StageVideo] = field(default_factory=list)
    finished: bool = False
    error: BaseException | None = None
    seconds: float = 0.0


def new_run_dir(output_dir: str) -> Path:
    """A fresh run folder name for one click: `app-<time>-<n>` (the folder is created by the run)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    n = 0
    while (Path(output_dir) / f"app-{stamp}-{n}").exists():
        n += 1
    return Path(output_dir) / f"app-{stamp}-{n}"


def stage_videos(run_dir: Path) -> list[StageVideo]:
    """Every stage video finished so far, in the order the stages ran."""
    records = manifest.read_records(run_dir) if run_dir.is_dir() else []
    return [StageVideo(r["stage"], run_dir / r["files"]["mp4"], r["frames"]) for r in records if "mp4" in r["files"]]


def render(cfg: DictConfig, cache: PipelineCache, stem: str = "app") -> Iterator[SamplingUpdate]:
    """Render one click's config with `run_sampling`; yields an update whenever a stage video appears, then the
    finished (or failed) run."""
    cfg.formats = sorted(set(cfg.formats) | {"mp4"})  # the page plays MP4
    run_dir = new_run_dir(cfg.output_dir)
    events: queue.Queue = queue.Queue()
    start = time.perf_counter()
    in_thread(lambda: run_sampling(stem, cfg=cfg, progress=True, run_dir=run_dir, load=cache), events)
    shown = 0
    while True:
        try:
            kind, value = events.get(timeout=POLL_SECONDS)
        except queue.Empty:
            kind, value = None, None
        videos = stage_videos(run_dir)
        if kind is None and len(videos) == shown:
            continue
        shown = len(videos)
        update = SamplingUpdate(run_dir, videos, seconds=time.perf_counter() - start)
        if kind == "error":
            update.error = value
        update.finished = kind == "done"
        yield update
        if kind is not None:
            return


class TrainingCancelled(Exception):
    """Raised from the step hook when the page's Cancel button was pressed."""


@dataclass
class TrainingUpdate:
    step: int = 0
    losses: list[float] = field(default_factory=list)
    run_dir: Path | None = None
    outcome: object = None  # the `Outcome` of a finished training
    error: BaseException | None = None


class TrainingJob:
    """One training at a time, cancellable between steps."""

    def __init__(self):
        self.cancel = threading.Event()

    def run(self, train: Callable) -> Iterator[TrainingUpdate]:
        """`train(on_step)` runs `train_identities` with the hook; yields an update per step and a last one. A
        cancel set before the first step (while models load) stops it after that step."""
        events: queue.Queue = queue.Queue()

        def on_step(step: int, losses: list[float], run_dir: Path) -> None:
            events.put(("step", TrainingUpdate(step, list(losses), run_dir)))
            if self.cancel.is_set():
                raise TrainingCancelled(f"cancelled after step {step}")

        in_thread(lambda: train(on_step), events)
        last = TrainingUpdate()
        while True:
            kind, value = events.get()
            if kind == "step":
                last = value
                yield value
                continue
            yield TrainingUpdate(last.step, last.losses, last.run_dir, outcome=value if kind == "done" else None,
                                 error=value if kind == "error" else None)
            return


def validation_videos(run_dir: Path | None) -> list[Path]:
    """The validation videos a training wrote so far, newest step first."""
    if run_dir is None or not (run_dir / "samples").is_dir():
        return []
    steps = sorted((run_dir / "samples").glob("step-*"), key=lambda p: int(p.name.split("-")[1]), reverse=True)
    return [video for step in steps for video in sorted(step.glob("*.mp4"))]


def clip_length(path: str) -> tuple[int, float]:
    """(frames, seconds) of an uploaded clip from its container's header, without decoding it."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            seconds = float(stream.duration * stream.time_base) if stream.duration else \
                (container.duration or 0) / 1e6
            frames = stream.frames or round(seconds * float(stream.average_rate or 0))
            return frames, seconds
    except (av.error.FFmpegError, IndexError, OSError) as err:
        raise ConfigError(f"video: {Path(path).name} is not a video this app can read ({type(err).__name__}); "
                          "upload an MP4 or GIF") from err
