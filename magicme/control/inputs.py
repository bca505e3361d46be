"""A first stage's control (t2v, edit): its clips read and its canny / lineart videos extracted in `prepare`, before
any model loads (a bad clip fails fast); its depth / pose videos extracted by their models and its ControlNets
loaded in `setup`, on the run's device; the extracted videos saved next to the outputs.

A control clip is fitted to the run as `input_video` is: its first `frames` frames (fewer is an error naming
`control[i].video`), resized to cover width × height and centre-cropped, so a clip and an edit of the same source line
up frame for frame. Nothing is resampled in time.
"""

from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from magicme.control.settings import control_entries
from magicme.control.sparse import SparseInputs
from magicme.errors import ConfigError


class ControlInputs:
    def __init__(self, cfg: DictConfig):
        self.entries = control_entries(cfg)
        self.frames, self.height, self.width = cfg.frames, cfg.height, cfg.width
        self.fps, self.formats = cfg.fps, tuple(cfg.formats)
        self.videos: list[np.ndarray | None] = []  # None: extracted by a model in `setup`
        self.source: np.ndarray | None = None
        self.control = None  # magicme.control.nets.Control once set up; None without `control:`

    def prepare(self, source: np.ndarray | None = None) -> None:
        """Each entry's (frames, height, width, 3) [0, 1] video: its clip fitted to the run, or extracted from
        `source` (the fitted input clip) by canny or lineart; depth and pose wait for `setup`."""
        from magicme.control.canny import canny_video
        from magicme.control.lineart import lineart_video
        from magicme.video_io import prepare_input_video

        self.source = source
        self.videos = []
        for e in self.entries:
            if e.video is not None:
                video = prepare_input_video(e.video, self.frames, self.height, self.width, key=f"{e.key}.video")
            elif e.type == "canny":
                video = canny_video(source, e.low, e.high)
            elif e.type == "lineart":
                video = lineart_video(source)
            else:
                video = None
            self.videos.append(video)

    def extract(self, device) -> None:
        """The depth / pose videos, each preprocessor model loaded on `device` for its entry."""
        from magicme.control.depth import depth_video
        from magicme.control.pose import pose_video

        def extracted(entry):
            if entry.type == "depth":
                return depth_video(self.source, entry.preprocessor, device)
            return pose_video(self.source, entry.preprocessor, device, person=entry.person)

        self.videos = [extracted(e) if v is None else v for e, v in zip(self.entries, self.videos)]

    def setup(self, pipe) -> None:
        """Extract the depth / pose videos, load the ControlNets in the pipeline's precision; a net made for another
        UNet is an error naming it."""
        if not self.entries:
            return
        from magicme.control.nets import Control

        self.extract(pipe.device)
        e = self.entries
        self.control = Control.load([x.model for x in e], self.videos, [x.scale for x in e], [x.start for x in e],
                                    [x.end for x in e], pipe.device, pipe.dtype, configs=[x.config for x in e])
        unet = pipe.t2v.unet.config
        for entry, net in zip(e, self.control.nets.nets):
            ours = (list(net.config.block_out_channels), net.config.cross_attention_dim)
            theirs = (list(unet.block_out_channels), unet.cross_attention_dim)
            if ours != theirs:
                raise ConfigError(f"{entry.key}.model: {entry.model} is a ControlNet for a UNet with channels, text "
                                  f"width {ours}, the base model has {theirs}; use a ControlNet of the base's family")

    def save(self, out: Path) -> None:
        """The extracted control videos, `control-<i>-<type>.<format>`, for the user to inspect."""
        from magicme.video_io import write_video

        for i, (entry, video) in enumerate(zip(self.entries, self.videos)):
            if entry.type is not None:
                write_video(out / f"control-{i}-{entry.type}", video, self.fps, self.formats)


class Guidance:
    """What guides a first stage (t2v, edit): its `control:` ControlNets and its `sparse_control:` keyframes, read
    in `prepare` (before any model loads), loaded in `setup`, passed to the pipeline by `pipeline_kwargs`."""

    def __init__(self, cfg: DictConfig):
        self.control, self.sparse = ControlInputs(cfg), SparseInputs(cfg)

    def prepare(self, source: np.ndarray | None = None) -> None:
        self.control.prepare(source)
        self.sparse.prepare()

    def setup(self, pipe) -> None:
        self.control.setup(pipe)
        self.sparse.setup(pipe)

    def save(self, out: Path) -> None:
        self.control.save(out)

    def pipeline_kwargs(self) -> dict:
        return {"control": self.control.control, "sparse": self.sparse.control}
