"""Face VCD and Tiled VCD refinement stages and ID video editing (issue 5); see docs/vcd.md."""

from magicme.vcd.config import (
    EditConfig, FaceConfig, TiledConfig, validate_edit_config, validate_face_config, validate_tiled_config,
)
from magicme.vcd.edit import prepare_input_video, run_edit_stage
from magicme.vcd.face import run_face_stage
from magicme.vcd.tiled import run_tiled_stage

__all__ = [
    "EditConfig", "FaceConfig", "TiledConfig", "prepare_input_video", "run_edit_stage", "run_face_stage",
    "run_tiled_stage", "validate_edit_config", "validate_face_config", "validate_tiled_config",
]
