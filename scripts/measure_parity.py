"""Measure how far diffusers' UNetMotionModel is from the original AnimateDiff math, before and after
magicme.parity, on tiny random-weight float64 UNets with the v1/v2/v3 motion-module layouts (seconds on a CPU).

    python scripts/measure_parity.py [--frames 16] [--batch 2] [--seed 0]

Prints `name=value` lines: relative error ‖out − ref‖ / ‖ref‖ of the whole UNet's noise prediction
(`<v>_rel_err_diffusers`, `<v>_rel_err_original`) and the worst single motion module (`<v>_motion_module_...`),
against the independent reference in tests/animatediff_reference.py.
"""

import argparse
import copy
import sys
from pathlib import Path

import torch
from diffusers.utils import logging

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from magicme.parity import MOTION_VERSIONS, apply_animatediff_numerics  # noqa: E402 - after making the repo importable
from tests.animatediff_reference import (  # noqa: E402
    reference_motion_module, reference_unet, rel_err, tiny_inputs, tiny_unet,
)
from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D  # noqa: E402


@torch.no_grad()
def measure(version: str, frames: int, batch: int, seed: int) -> dict[str, float]:
    stock = tiny_unet(version, seed=seed)
    unet = copy.deepcopy(stock)
    apply_animatediff_numerics(unet, version, "original")
    inputs = tiny_inputs(batch, frames, seed=seed + 1)
    expected = reference_unet(stock, frames, pooled_norms=version == "v1")(**inputs).sample
    errors = {"rel_err_diffusers": rel_err(stock(**inputs).sample, expected),
              "rel_err_original": rel_err(unet(**inputs).sample, expected)}

    generator = torch.Generator().manual_seed(seed + 2)
    module_stock, module_original = 0.0, 0.0
    for module, stock_module in zip(unet.modules(), stock.modules()):
        if isinstance(module, AnimateDiffTransformer3D):
            x = torch.randn(batch * frames, module.proj_in.in_features, 4, 4, generator=generator,
                            dtype=torch.float64)
            ref = reference_motion_module(module, x, frames)
            module_stock = max(module_stock, rel_err(stock_module(x, num_frames=frames), ref))
            module_original = max(module_original, rel_err(module(x, num_frames=frames), ref))
    errors["motion_module_max_rel_err_diffusers"] = module_stock
    errors["motion_module_max_rel_err_original"] = module_original
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--batch", type=int, default=2, help="2 = a CFG batch (default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.set_verbosity_error()  # the float64 cast of the tiny UNet logs a harmless dtype notice
    print(f"frames={args.frames} batch={args.batch} seed={args.seed} dtype=float64")
    for version in MOTION_VERSIONS:
        for name, value in measure(version, args.frames, args.batch, args.seed).items():
            print(f"{version}_{name}={value:.3g}")


if __name__ == "__main__":
    main()
