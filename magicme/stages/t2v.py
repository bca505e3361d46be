"""Text→video: the sample's prompt, from the 3D Gaussian noise prior (the paper's T2V VCD), guided by the
`control:` ControlNets and the `sparse_control:` SparseCtrl keyframes when there are any (magicme/control/)."""

from pathlib import Path

from magicme.control.inputs import Guidance
from magicme.stages import Stage, register_stage


@register_stage
class TextToVideo(Stage):
    name = "t2v"
    first = True

    def __init__(self, cfg, progress: bool = False):
        super().__init__(cfg, progress)
        self.guidance = Guidance(cfg)

    def prepare(self) -> None:
        self.guidance.prepare()

    def setup(self, pipe) -> None:
        self.guidance.setup(pipe)

    def save_inputs(self, out: Path) -> None:
        self.guidance.save(out)

    def __call__(self, pipe, video, sample, generator):
        r = self.run
        video = pipe.text_to_video(sample.prompt, sample.negative_prompt, generator, gamma=sample.gamma,
                                   frames=r.frames, height=r.height, width=r.width, steps=r.steps,
                                   guidance_scale=r.guidance_scale, progress=self.progress,
                                   **self.guidance.pipeline_kwargs())
        return video, {}
