"""Many identities in one training: `train.py --config a.yaml b.yaml …` or a config with `identities: [ann, bob]`.

A process trains its identities one after another with the models loaded once (`trainer.SharedModels`), each from
the vocabulary as loaded, so identities never leak into each other. Under `accelerate launch` several identities
are shared out among the processes (`assign`: deterministic, balanced by steps left), each process training its own
alone; a single identity is trained by all processes together (data-parallel), as before. Every identity gets its
own run folder and `<name>.pt`; `--resume auto` skips finished identities, continues partial ones and starts the
others, so re-running a command after a crash redoes only what was lost.
"""

import filecmp
import shlex
from dataclasses import dataclass
from pathlib import Path

from accelerate import PartialState
from accelerate.utils import gather_object, parse_flag_from_env
from omegaconf import DictConfig

from magicme.errors import ConfigError
from magicme.prompts import ID_PLACEHOLDER
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
    command: str | None = None  # the sample.py command that renders the identity (None: no sampling config)


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


def check_embedding_copy(cfg: DictConfig, decision: Decision, force: bool) -> None:
    """Before training: the identity's file in `copy_to_embeddings_dir` may be replaced only if it is absent, is
    this very run's (a resumed run's own file), or `--force` is given; another training's identity of the same
    name is never overwritten silently."""
    if not cfg.copy_to_embeddings_dir or force or decision.finished:
        return
    target = Path(cfg.copy_to_embeddings_dir) / final_file(cfg)
    if not target.exists():
        return
    own = decision.point.run_dir / final_file(cfg) if decision.point else None
    if own is not None and own.is_file() and filecmp.cmp(own, target, shallow=False):
        return
    raise ConfigError(f"copy_to_embeddings_dir: {target} already exists (another identity called {cfg.name!r}); "
                      f"pass --force to replace it with this training's, or train under another name (name=...)")


def sample_command(cfg: DictConfig, output: str) -> str | None:
    """The exact sample.py command that renders the trained identity with `sample_config` (its first validation
    prompt), pointing `model.embeddings_dir` at the identity's folder when that config looks elsewhere."""
    if not cfg.sample_config or not Path(cfg.sample_config).is_file():
        return None
    from magicme.schema import load_sample_config

    folder = Path(cfg.copy_to_embeddings_dir) if cfg.copy_to_embeddings_dir else Path(output).parent
    text = cfg.validation.prompts[0] if cfg.validation.prompts else f"a photo of {ID_PLACEHOLDER}"
    text = text.replace("\\", "").replace('"', "'")
    sampling = load_sample_config(cfg.sample_config)
    if sampling.identities:  # a grid config: this identity alone, {id} filled by the grid with its class word
        words = ["python", "sample.py", "--config", cfg.sample_config, f'prompts=["{text}"]',
                 f"identities=[{cfg.name}]"]
    else:
        text = text.replace(ID_PLACEHOLDER, f"<{cfg.name}> {cfg.class_word}")
        words = ["python", "sample.py", "--config", cfg.sample_config, f'prompts=["{text}"]']
    reads = sampling.model.embeddings_dir
    if reads is None or Path(reads).resolve() != folder.resolve():
        words.append(f"model.embeddings_dir={folder}")
    return shlex.join(words)


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
    output = str(decision.point.run_dir / final_file(cfg))
    return Outcome(cfg.name, "finished", int(state["step"]), state["losses"][-1] if state["losses"] else None, 0.0,
                   output, sample_command(cfg, output))


def process_state() -> PartialState:
    """This process's place among those `accelerate launch` (or torchrun) started; on CPU too: accelerate's CPU
    launch says so in ACCELERATE_USE_CPU, which only AcceleratorState reads by itself."""
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def train_identities(jobs: list[Job], resume: str | None = None, progress: bool = True,
                     on_step: StepHook | None = None, force: bool = False) -> list[Outcome]:
    """Train every job (in this process, or its share of them under accelerate); returns the outcomes of all jobs in
    their order (on every process). `on_step`: see `trainer.run_training`; `force`: replace an identity file of the
    same name in `copy_to_embeddings_dir` (see `check_embedding_copy`)."""
    check_resume_flag(resume, jobs)
    state = process_state()
    decisions = [decide(job.cfg, resume) for job in jobs]  # every process reads the same run folders ...
    for job, decision in zip(jobs, decisions):
        check_embedding_copy(job.cfg, decision, force)
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
        output = str(trained.run_dir / final_file(job.cfg))
        outcomes.append((index, Outcome(job.cfg.name, "resumed" if trained.resumed_from else "trained",
                                        trained.steps, trained.final_loss, trained.seconds, output,
                                        sample_command(job.cfg, output))))
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
