"""The IR (improved-residual) face backbone in TFace's `model_irse` layout, which CurricularFace's released
`glint360k_curricular_face_r101_backbone.bin` (IR-101, what ConsisID loads) uses: `input_layer` (3×3 conv, BN,
PReLU) → `body.N` blocks (`res_layer`: BN, 3×3 conv, BN, PReLU, strided 3×3 conv, BN; `shortcut_layer`: a 1×1
strided conv + BN where the width changes, else a stride) → `output_layer` (BN, dropout, flatten, linear, BN).

The widths and block counts are read from the state dict (IR-101: 64→512 wide, 3/13/30/3 blocks), so the same
code loads the real file and the tiny fixture."""

import re
from pathlib import Path

import torch
from torch import nn

from magicme.errors import ConfigError


class Block(nn.Module):
    def __init__(self, width_in: int, width: int, stride: int):
        super().__init__()
        if width_in == width:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(width_in, width, 1, stride, bias=False),
                                                nn.BatchNorm2d(width))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(width_in), nn.Conv2d(width_in, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
            nn.PReLU(width), nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class IRNet(nn.Module):
    """`stages`: (width, blocks) per stage; each stage's first block halves the resolution (112 → 7)."""

    def __init__(self, stem: int, stages: list[tuple[int, int]], embedding: int, input_size: int = 112):
        super().__init__()
        self.input_layer = nn.Sequential(nn.Conv2d(3, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem),
                                         nn.PReLU(stem))
        blocks, width_in = [], stem
        for width, count in stages:
            blocks += [Block(width_in, width, 2)] + [Block(width, width, 1) for _ in range(count - 1)]
            width_in = width
        self.body = nn.Sequential(*blocks)
        side = input_size // 2 ** len(stages)
        self.output_layer = nn.Sequential(nn.BatchNorm2d(width_in), nn.Dropout(0.4), nn.Flatten(),
                                          nn.Linear(width_in * side * side, embedding),
                                          nn.BatchNorm1d(embedding, affine=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_layer(self.body(self.input_layer(x)))


def layout(state: dict[str, torch.Tensor], where: str) -> tuple[int, list[tuple[int, int]], int]:
    """(stem width, [(width, blocks)] per stage, embedding size) of an IR state dict."""
    if "input_layer.0.weight" not in state or "output_layer.3.weight" not in state:
        raise ConfigError(f"{where}: not an IR face backbone state dict (no input_layer.0 / output_layer.3 "
                          f"weights); give CurricularFace's glint360k_curricular_face_r101_backbone.bin")
    count = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"body\.(\d+)\.", k)))
    stages: list[tuple[int, int]] = []
    for index in range(count):
        width = state[f"body.{index}.res_layer.1.weight"].shape[0]
        # a stage starts where the width changes (a 1×1 conv shortcut); the first stage keeps the stem's width
        if index == 0 or f"body.{index}.shortcut_layer.0.weight" in state:
            stages.append((width, 1))
        else:
            stages[-1] = (width, stages[-1][1] + 1)
    return state["input_layer.0.weight"].shape[0], stages, state["output_layer.3.weight"].shape[0]


def load_irnet(path: Path | str, where: str = "curricularface") -> IRNet:
    """An IR backbone from a torch state dict file (read with weights_only) or a .safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{where}: {path} is not a file; give CurricularFace's IR-101 backbone "
                          f"(glint360k_curricular_face_r101_backbone.bin, see docs/evaluation.md)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # pickle, zip or tensor errors: all mean "not a state dict we can read"
            raise ConfigError(f"{where}: {path} is not a readable torch state dict ({err}); give the IR-101 "
                              f"backbone file") from err
    if not isinstance(state, dict):
        raise ConfigError(f"{where}: {path} holds no state dict")
    stem, stages, embedding = layout(state, f"{where}: {path}")
    model = IRNet(stem, stages, embedding)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ConfigError(f"{where}: {path} does not fit the IR layout ({str(err).splitlines()[0]})") from err
    return model.eval()
