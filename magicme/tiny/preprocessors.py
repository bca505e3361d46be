"""Tiny random-weight preprocessor models in the folder format of the real ones (config.json, model.safetensors,
preprocessor_config.json), for the `depth` and `pose` control preprocessors' tests and tiny configs.

Their depth maps and keypoints are noise that depends on the frame: enough to test loading, shapes and wiring, not
to show that a depth or a pose is found (docs/control.md).
"""

from pathlib import Path

import torch
from transformers import (
    DepthAnythingConfig,
    DepthAnythingForDepthEstimation,
    Dinov2Config,
    VitPoseBackboneConfig,
    VitPoseConfig,
    VitPoseForPoseEstimation,
)
from transformers.models.dpt.image_processing_pil_dpt import DPTImageProcessorPil
from transformers.models.vitpose.image_processing_pil_vitpose import VitPoseImageProcessorPil

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def save_tiny_depth(out: Path, seed: int = 0) -> Path:
    """A Depth Anything (DINOv2 backbone, DPT head) of hidden width 16, 56² inputs (multiples of its 14-px patch),
    with Depth-Anything-V2's processor settings otherwise (keep aspect ratio, bicubic, ImageNet normalisation)."""
    torch.manual_seed(seed)
    backbone = Dinov2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                            image_size=56, patch_size=14, out_features=["stage1", "stage2"],
                            reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=16, neck_hidden_sizes=[8, 16],
                                 reassemble_factors=[2, 1], fusion_hidden_size=16, head_hidden_size=8,
                                 depth_estimation_type="relative")
    DepthAnythingForDepthEstimation(config).save_pretrained(out)
    DPTImageProcessorPil(size={"height": 56, "width": 56}, keep_aspect_ratio=True, ensure_multiple_of=14,
                         resample=3, do_pad=False, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD).save_pretrained(out)
    return out


def save_tiny_vitpose(out: Path, seed: int = 0) -> Path:
    """A VitPose (ViT backbone of width 16, simple decoder) on 64×48 crops, 17 COCO keypoints; its heatmap bias is 1
    so that the random keypoints score above the drawing threshold and a skeleton is drawn."""
    torch.manual_seed(seed)
    backbone = VitPoseBackboneConfig(image_size=[64, 48], patch_size=[16, 16], hidden_size=16, num_hidden_layers=2,
                                     num_attention_heads=2, mlp_ratio=2, out_indices=[2])
    model = VitPoseForPoseEstimation(VitPoseConfig(backbone_config=backbone, num_labels=17))
    with torch.no_grad():
        model.head.conv.bias.fill_(1.0)
    model.save_pretrained(out)
    VitPoseImageProcessorPil(size={"height": 64, "width": 48}, image_mean=IMAGENET_MEAN,
                             image_std=IMAGENET_STD).save_pretrained(out)
    return out
