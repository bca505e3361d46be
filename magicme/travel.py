"""Prompt travel: a prompt that changes over the video, `{0: "… smiling", 8: "… laughing", 15: "… crying"}`.

Each keyframe's prompt is encoded; every frame gets the linear interpolation of the conditionings of the keyframes
around it (ComfyUI's BatchPromptSchedule); frames before the first keyframe or after the last take the nearest one.
The diffusers pipelines repeat one conditioning for every frame, so `per_frame_conditioning` swaps the UNet's
per-frame rows for the travelling ones during a call (the rows are batch-major: [negative frames, positive frames]
with guidance, the positive frames without). A prompt with one keyframe never reaches this module: it is the plain
prompt, bit for bit.
"""

import contextlib

import torch

from magicme.prompts import frame_mix


def interpolate(embeds: list[torch.Tensor], keys: list[int], frames: int) -> torch.Tensor:
    """(frames, T, D) conditioning from one (1, T, D) encoding per keyframe."""
    rows = []
    for before, after, t in frame_mix(keys, frames):
        a, b = embeds[before][0], embeds[after][0]
        rows.append(a if t == 0.0 else torch.lerp(a.float(), b.float(), t).to(a.dtype))
    return torch.stack(rows)


@contextlib.contextmanager
def per_frame_conditioning(unet, positive: torch.Tensor, negative: torch.Tensor):
    """While active, the UNet reads `positive` / `negative` (frames, T, D) as its per-frame text conditioning."""
    frames = positive.shape[0]
    own = unet.__dict__.get("forward")  # an instance-level forward set by another wrapper (context windows)
    forward = unet.forward

    def travelling(*args, **kwargs):
        rows = kwargs["encoder_hidden_states"]
        batch = rows.shape[0] // frames
        if batch not in (1, 2):
            raise ValueError(f"prompt travel: {rows.shape[0]} conditioning rows for {frames} frames")
        travel = positive if batch == 1 else torch.cat([negative, positive])
        kwargs["encoder_hidden_states"] = travel.to(rows.device, rows.dtype)
        return forward(*args, **kwargs)

    unet.forward = travelling
    try:
        yield
    finally:
        if own is None:
            del unet.forward  # back to the class's forward
        else:
            unet.forward = own
