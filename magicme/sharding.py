"""Sharing a grid among the processes of an `accelerate launch` (one process, rank 0 of 1, without one).

Every process checks the config and loads the models on its own device; the main process alone claims the run
folder (lock, resume check, config.yaml) and tells the others what it found, errors included, so no process waits
for an answer that never comes. The samples still to render are assigned by cost, longest first to the least
loaded process (a stable order: the same grid always splits the same way); each process renders its share in grid
order and writes its own manifest shard (magicme/manifest.py); the main process waits for all, then merges.
"""

from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

from omegaconf import DictConfig

from magicme.errors import ConfigError
from magicme.stages import STAGES, Sample

T = TypeVar("T")
# How long a process may wait for the others (the main process waits for the slowest share at the end).
WAIT = timedelta(hours=48)


class Launch:
    """This process's place in the launch: rank, number of processes, and the two ways they talk."""

    def __init__(self):
        import torch
        from accelerate import PartialState
        from accelerate.utils import parse_flag_from_env

        # without a GPU the processes talk over gloo (`accelerate launch --multi_gpu` on a CPU machine)
        cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()
        self.state = PartialState(cpu=cpu, timeout=WAIT)
        self.rank, self.world = self.state.process_index, self.state.num_processes
        self.is_main = self.state.is_main_process

    def device(self, configured: str) -> str:
        """Each process of a launch renders on its own device: `auto` becomes the one accelerate gives it."""
        if self.world == 1 or configured == "cpu":
            return configured
        if configured != "auto":
            raise ConfigError(f"device: {configured!r} with {self.world} processes; set device=auto so that each "
                              "process uses its own GPU (or cpu)")
        return str(self.state.device)

    def on_main(self, work: Callable[[], T]) -> T:
        """Run `work` on the main process and hand its result to every process; a ConfigError it raises is raised
        by every process."""
        outcome = None
        if self.is_main:
            try:
                outcome = ("ok", work())
            except ConfigError as err:
                outcome = ("error", str(err))
        if self.world > 1:
            from accelerate.utils import broadcast_object_list

            outcome = broadcast_object_list([outcome])[0]
        if outcome[0] == "error":
            raise ConfigError(outcome[1])
        return outcome[1]

    def wait_for_everyone(self) -> None:
        self.state.wait_for_everyone()


def stage_cost(cfg: DictConfig, stage: str) -> float:
    """Relative cost of one stage's video: frames × pixels denoised × steps actually run (a partial denoise runs
    steps × strength); face crops count as `face.size`², an upscale as `scale`² times the frame."""
    block = cfg[stage] if STAGES[stage].Config is not None else {}
    pixels = block["size"] ** 2 if "size" in block else cfg.height * cfg.width
    steps = block.get("steps") or cfg.steps
    strength = block["strength"] if "strength" in block else (cfg.input_strength if stage == "edit" else 1.0)
    return float(cfg.frames * pixels * block.get("scale", 1) ** 2 * steps * strength)


def sample_cost(cfg: DictConfig, sample: Sample) -> float:
    return sum(stage_cost(cfg, stage) for stage, _ in sample.hashes)


def assign(costs: list[float], processes: int) -> list[list[int]]:
    """Longest processing time first: positions sorted by cost (ties by position) go to the least loaded process
    (ties to the lowest rank); each share in position order."""
    loads, shares = [0.0] * processes, [[] for _ in range(processes)]
    for position in sorted(range(len(costs)), key=lambda p: (-costs[p], p)):
        rank = min(range(processes), key=lambda r: (loads[r], r))
        loads[rank] += costs[position]
        shares[rank].append(position)
    return [sorted(share) for share in shares]
