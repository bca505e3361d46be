"""Text→video: the sample's prompt, from the 3D Gaussian noise prior (the paper's T2V VCD)."""

from magicme.stages import Stage, register_stage


@register_stage
class TextToVideo(Stage):
    name = "t2v"
    first = True

    def __call__(self, pipe, video, sample, generator):
        r = self.run
        video = pipe.text_to_video(sample.prompt, sample.negative_prompt, generator, gamma=sample.gamma,
                                   frames=r.frames, height=r.height, width=r.width, steps=r.steps,
                                   guidance_scale=r.guidance_scale, progress=self.progress)
        return video, {}
