"""ID video editing: re-render `input_video` with the identity (partial 3D-prior noise at `input_strength`).

Its settings are the top-level `input_video` / `input_strength` keys (a config with `input_video` set starts with
this stage instead of `t2v`; see magicme/schema.py). `control:` entries guide it with ControlNets, from clips or
extracted from the input clip, and `sparse_control:` with SparseCtrl keyframes (magicme/control/).
"""

from pathlib import Path

from magicme.control.inputs import Guidance
from magicme.stages import Stage, register_stage
from magicme.steps import schedule_problems


@register_stage
class EditVideo(Stage):
    name = "edit"
    first = True

    @classmethod
    def check(cls, cfg):
        problems = []
        if cfg.input_video is None:
            problems.append("input_video: the edit stage needs a clip to re-render; set input_video (MP4/GIF/frame "
                            "folder) or use the t2v stage")
        elif not Path(cfg.input_video).exists():
            problems.append(f"input_video: {cfg.input_video} not found; give an MP4/GIF file or a folder of frames")
        if not 0.0 <= cfg.input_strength <= 1.0:
            problems.append(f"input_strength: {cfg.input_strength} not in [0, 1]")
        return problems + schedule_problems("input_strength", cfg.steps, cfg.input_strength)

    def __init__(self, cfg, progress: bool = False):
        super().__init__(cfg, progress)
        self.path, self.strength = str(cfg.input_video), cfg.input_strength
        self.source = None
        self.guidance = Guidance(cfg)

    def prepare(self) -> None:
        """Read and fit the input clip once, and the control videos (some extracted from it) and keyframes, before
        any model time is spent on samples."""
        from magicme.video_io import prepare_input_video  # imageio: not needed for the config checks

        self.source = prepare_input_video(self.path, self.run.frames, self.run.height, self.run.width)
        self.guidance.prepare(self.source)

    def setup(self, pipe) -> None:
        self.guidance.setup(pipe)

    def save_inputs(self, out: Path) -> None:
        self.guidance.save(out)

    def __call__(self, pipe, video, sample, generator):
        r = self.run
        video = pipe.video_to_video(self.source, sample.prompt, sample.negative_prompt, generator,
                                    gamma=sample.gamma, strength=self.strength, steps=r.steps,
                                    guidance_scale=r.guidance_scale, progress=self.progress, desc="edit",
                                    **self.guidance.pipeline_kwargs())
        return video, {}
