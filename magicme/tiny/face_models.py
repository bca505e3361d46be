"""Tiny face-identity models in the real formats the evaluation reads: an insightface model pack folder
(`det_10g.onnx`: an SCRFD-signature detector, 9 outputs — score, box, 5 landmarks per stride 8/16/32, 2 anchors;
`w600k_r50.onnx`: an ArcFace-signature recogniser, (N, 3, 112, 112) → (N, d)) exported with torch.onnx, and a
CurricularFace IR-layout state dict. Their weights are random except the detector's, which is built to find one
"face" wherever the image is bright: a test knows where the detector will look."""

from pathlib import Path

import torch
from torch import nn

from magicme.evaluation.alignment import ARCFACE_TEMPLATE
from magicme.evaluation.irnet import IRNet

ANCHORS = 2
BOX_HALF = 2.0  # box half-size in stride units: a 4-stride square around the anchor centre


class TinyScrfd(nn.Module):
    """Per stride s: brightness averaged over s × s cells → score = sigmoid(8 · mean − 2) (bright cells
    only pass 0.5), a fixed square box and the ArcFace template's 5 points scaled into it, in stride units."""

    def __init__(self):
        super().__init__()
        offsets = (torch.tensor(ARCFACE_TEMPLATE, dtype=torch.float32) - 56.0) / 56.0 * BOX_HALF
        self.register_buffer("points", offsets.reshape(1, 1, 10))
        self.register_buffer("box", torch.full((1, 1, 4), BOX_HALF))

    def forward(self, x: torch.Tensor):
        scores, boxes, points = [], [], []
        for stride in (8, 16, 32):
            brightness = nn.functional.avg_pool2d(x.mean(1, keepdim=True), stride)  # (1, 1, h, w)
            logits = (8 * brightness - 2).permute(0, 2, 3, 1).reshape(-1, 1)
            cells = logits.shape[0]
            scores.append(torch.sigmoid(logits).repeat_interleave(ANCHORS, 0))
            boxes.append(self.box.expand(cells * ANCHORS, 1, 4).reshape(-1, 4))
            points.append(self.points.expand(cells * ANCHORS, 1, 10).reshape(-1, 10))
        return (*scores, *boxes, *points)


class TinyArcFace(nn.Module):
    def __init__(self, dim: int = 16):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 8, stride=8)
        self.fc = nn.Linear(4 * 14 * 14, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def _export(model: nn.Module, example: torch.Tensor, path: Path, outputs: list[str], dynamic: dict) -> None:
    torch.onnx.export(model.eval(), (example,), str(path), input_names=["input.1"], output_names=outputs,
                      dynamic_axes=dynamic, opset_version=17, dynamo=False)


def save_tiny_insightface_pack(folder: Path | str, seed: int = 0) -> Path:
    """A buffalo_l-named pack folder: det_10g.onnx (TinyScrfd) + w600k_r50.onnx (TinyArcFace)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"{kind}_{s}" for kind in ("score", "bbox", "kps") for s in (8, 16, 32)]
    _export(TinyScrfd(), torch.zeros(1, 3, 64, 64), folder / "det_10g.onnx", names,
            {"input.1": {2: "height", 3: "width"}, **{n: {0: "anchors"} for n in names}})
    torch.manual_seed(seed)
    _export(TinyArcFace(), torch.zeros(1, 3, 112, 112), folder / "w600k_r50.onnx", ["embedding"],
            {"input.1": {0: "batch"}, "embedding": {0: "batch"}})
    return folder


def save_tiny_curricularface(path: Path | str, seed: int = 0) -> Path:
    """An IR-layout state dict (stem 4, four one-block stages 4/8/12/16 wide, 8-d embedding), torch.save'd."""
    torch.manual_seed(seed)
    model = IRNet(4, [(4, 1), (8, 1), (12, 1), (16, 1)], 8).eval()
    path = Path(path)
    torch.save(model.state_dict(), path)
    return path

