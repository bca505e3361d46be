"""Many identities in one training: `train.py --config a.yaml b.yaml …` or a config with `identities: [ann, bob]`.

A process trains its identities one after another with the models loaded once (`trainer.SharedModels`), each from
the vocabulary as loaded, so identities never leak into each other. Under `accelerate launch` several identities
are shared out among the processes (`assign`: deterministic, balanced by steps left), each process training its own
alone; a single identity is trained by all processes together (data-parallel), as before. Every identity gets its
own run folder and `<name>.pt`; `--resume auto` skips finished identities, continues partial ones and starts the
others, so re-running a command after a crash redoes only what was lost.
"""

from dataclasses import dataclass

from accelerate import PartialState
from accelerate.utils import gather_object, parse_flag_from_env
from omegaconf import DictConfig

from magicme.errors import ConfigError
from magicme.training.data import Photo
from magicme.training.trainer import (
    ResumePoint, StepHook, check_state_fits, final_file, find_resume_point, newest_good_state, newest_run,
    train_identity,
)

RESUME_AUTO = "auto"


@dataclass
class Job:
    """One identity to train: its checked single-identity config and decoded photos."""

    cfg: DictConfig
    photos: list[Photo]


@dataclass
class Decision:
    """Where an identity starts: a new run (no point), `point` in an existing run, or nothing to do (`finished`)."""

    point: ResumePoint | None = None
    finished: bool = False

    def steps_left(self, cfg: DictConfig) -> int:
        return 0 if self.finished else cfg.max_steps - (int(self.point.state["step"]) if self.point else 0)


@dataclass
class Outcome:
    """One row of the summary table."""

    name: str
    status: str  # trained (a new run) | resumed | finished (skipped: done before)
    steps: int  # the run's steps now
    final_loss: float | None
    seconds: float  # spent in this command
    output: str  # <run>/<name>.pt (SD-XL: <name>.safetensors)


def decide(cfg: DictConfig, resume: str | None) -> Decision:
    """`--resume auto`: the identity's newest run with a state is finished (its last state reached `max_steps` and
    its final file exists), or continued; no run starts one. Other values: as for one identity."""
    if resume is None:
        return Decision()
    if resume != RESUME_AUTO:
        return Decision(find_resume_point(resume, cfg))
    run = newest_run(cfg.output_dir, cfg.name)
    if run is None:
        return Decision()
    point = newest_good_state(run, f"--resume {RESUME_AUTO}")
    check_state_fits(point, cfg)
    return Decision(point, int(point.state["step"]) >= cfg.max_steps and (run / final_file(cfg)).is_file())


def check_resume_flag(resume: str | None, jobs: list[Job]) -> None:
    if resume not in (None, "latest", RESUME_AUTO) and len(jobs) > 1:
        raise ConfigError(f"--resume {resume}: a run folder or state file continues one identity; with several "
                          f"identities give {RESUME_AUTO} (or latest): each continues its own newest run")


def assign(costs: list[int], processes: int) -> list[int]:
    """The process of each identity: the longest first, each to the least loaded process (ties: the lower rank).
    A function of the costs alone, so every process computes the same assignment."""
    load, ranks = [0] * processes, [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        rank = min(range(processes), key=lambda r: (load[r], r))
        ranks[i], load[rank] = rank, load[rank] + costs[i]
    return ranks


def finished_outcome(cfg: DictConfig, decision: Decision) -> Outcome:
    state = decision.point.state
    return Outcome(cfg.name, "finished", int(state["step"]), state["losses"][-1] if state["losses"] else None, 0.0,
                   str(decision.point.run_dir / final_file(cfg)))


def process_state() -> PartialState:
    """This process's place among those `accelerate launch` (or torchrun) started; on CPU too: accelerate's CPU
    launch says so in ACCELERATE_USE_CPU, which only AcceleratorState reads by itself."""
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def train_identities(jobs: list[Job], resume: str | None = None, progress: bool = True,
                     on_step: StepHook | None = None) -> list[Outcome]:
    """Train every job (in this process, or its share of them under accelerate); returns the outcomes of all jobs in
    their order (on every process). `on_step`: see `trainer.run_training`."""
    check_resume_flag(resume, jobs)
    state = process_state()
    decisions = [decide(job.cfg, resume) for job in jobs]  # every process reads the same run folders ...
    state.wait_for_everyone()  # ... before any process writes into one
    together = len(jobs) == 1 and state.num_processes > 1
    ranks = [state.process_index] if together else \
        assign([d.steps_left(j.cfg) for j, d in zip(jobs, decisions)], state.num_processes)
    models, outcomes = None, []
    for index, (job, decision, rank) in enumerate(zip(jobs, decisions, ranks)):
        if rank != state.process_index:
            continue
        if decision.finished:
            outcomes.append((index, finished_outcome(job.cfg, decision)))
            continue
        trained = train_identity(job.cfg, job.photos, decision.point, models, together, progress, on_step)
        models = trained.models
        outcomes.append((index, Outcome(job.cfg.name, "resumed" if trained.resumed_from else "trained",
                                        trained.steps, trained.final_loss, trained.seconds,
                                        str(trained.run_dir / final_file(job.cfg)))))
    if state.num_processes > 1 and not together:
        outcomes = gather_object(outcomes)
    return [outcome for _, outcome in sorted(outcomes, key=lambda pair: pair[0])]


def summary_table(outcomes: list[Outcome]) -> str:
    """The plain-text table train.py prints at the end."""
    rows = [("identity", "status", "steps", "final loss", "seconds", "output")]
    rows += [(o.name, o.status, str(o.steps), "-" if o.final_loss is None else f"{o.final_loss:.5f}",
              f"{o.seconds:.1f}", o.output) for o in outcomes]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)
