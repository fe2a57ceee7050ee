"""What a resume may change about the run it continues: checked before anything is built.

`plan_resume` compares the checkpoint's config with the resumed one and refuses, with exit 2
and a command that works, what cannot be continued exactly: a schedule planned over the whole
run stretched to more epochs, a new schedule in the middle of an epoch, fewer epochs than
trained. It says what changed (for metrics.jsonl's "change" record), whether the optimizer and
scheduler must be retuned (retune.py applies it), and when there is nothing left to train,
the command that trains more. An explicit `scheduler.name=...` gives the epochs still to
train a new schedule, planned over them alone and recorded as `scheduler.start_epoch`: the
way to extend a finished one-cycle or cosine run without rewriting the steps already taken.

`existing_run` and `train_more` are the hints for a run folder that is already in use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trainkit.config import ExperimentConfig, get_path, parse_override, read_yaml_file
from trainkit.errors import ConfigError, RunExistsError, TrainkitError
from trainkit.registry import SCHEDULERS
from trainkit.runfolder.folder import RunFolder
from trainkit.runfolder.runlog import read_status
from trainkit.training.loop import TrainState
from trainkit.training.session import describe_early_stop, early_stop

# Changes that alter nothing about the steps trained, so they are not worth a "change" record.
_NOT_RECORDED = ("trainer.epochs", "trainer.device", "trainer.log_every", "trainer.limit_eval_batches")
_RECORDED_SECTIONS = ("optimizer", "scheduler", "trainer")


@dataclass
class ResumePlan:
    cfg: ExperimentConfig  # the config the resumed run trains with (and records)
    retune: bool = False  # optimizer hyperparameters and scheduler state come from the new config
    new_schedule: bool = False  # a new schedule starts at this epoch (scheduler.start_epoch)
    changes: dict[str, list[Any]] = field(default_factory=dict)  # dotted key -> [old, new]
    complete: str | None = None  # "(why); to train longer: <command>" when nothing is left to train


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else key
        out.update(_flat(value, dotted) if isinstance(value, dict) and value else {dotted: value})
    return out


def _section_changed(saved: dict[str, Any], new: dict[str, Any], section: str) -> bool:
    return saved.get(section) != new.get(section)


def _explicit(overrides: list[str] | tuple[str, ...], *paths: tuple[str, ...]) -> bool:
    """Whether an override the user typed names one of `paths` (e.g. scheduler.name)."""
    for text in overrides:
        try:
            path, _ = parse_override(text)
        except ConfigError:
            continue
        if tuple(path) in paths:
            return True
    return False


def resume_base(saved: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """The saved config the overrides apply to. Switching to another scheduler by name drops
    the old one's options (saved with their defaults, never written by the user), so
    `scheduler.name=cosine` on a one-cycle run does not inherit `pct_start`."""
    new_name = None
    for text in overrides:
        try:
            path, value = parse_override(text)
        except ConfigError:
            continue  # resolve reports it
        if tuple(path) == ("scheduler", "name"):
            new_name = value
    old = saved.get("scheduler")
    if new_name is None or not isinstance(old, dict) or old.get("name") == new_name:
        return saved
    return {**saved, "scheduler": {"name": old.get("name")}}


def _spans_run(name: Any) -> bool:
    return isinstance(name, str) and name in SCHEDULERS and bool(SCHEDULERS.get(name).traits.get("spans_run"))


def check_new_run(cfg: ExperimentConfig) -> None:
    """A new run's schedule starts at its first epoch; start_epoch belongs to resumed runs."""
    if cfg.scheduler is not None and cfg.scheduler.start_epoch:
        raise ConfigError(
            f"scheduler.start_epoch: a new run's schedule starts at epoch 0, got {cfg.scheduler.start_epoch} "
            "(the value in a resumed run's config.yaml); remove it with ~scheduler.start_epoch"
        )


def existing_run(folder: RunFolder) -> RunExistsError:
    """What to say when a new run would go into a folder that holds one: a command that
    continues it, when one can."""
    run = str(folder.path)
    if folder.newest_step() is None:
        return RunExistsError(run, "a run that saved no checkpoint", None)
    status = read_status(folder.path)
    if status.get("status") == "complete":
        try:
            scheduler = get_path(read_yaml_file(folder.config)[0] or {}, "scheduler.name")
        except TrainkitError:  # a damaged config.yaml: resume reads the checkpoint's own config
            scheduler = None
        done = not isinstance(status.get("epoch"), int) or status.get("epoch") == status.get("epochs")
        more = train_more(run, scheduler, bool(status.get("stopped_early")), done)
        return RunExistsError(run, "a complete run", f"to train it longer: `{more}`")
    return RunExistsError(run, "a run", f"continue it with `trainkit resume {run}`")


def plan_resume(
    saved: dict[str, Any],
    cfg: ExperimentConfig,
    overrides: list[str] | tuple[str, ...],
    position: TrainState,
    run: str,
    source: str,
) -> ResumePlan:
    """Check what the overrides change about the saved run; refuse what cannot be applied
    exactly (ConfigError, exit 2). Nothing is built or written here."""
    if _explicit(overrides, ("scheduler", "start_epoch")):
        raise ConfigError(
            "scheduler.start_epoch: is set by trainkit when scheduler.name=... gives a resumed run a new "
            "schedule; give scheduler.name instead",
            source,
        )
    done, batch = position.epoch, position.batch
    saved_sched = saved.get("scheduler") or None
    saved_name = saved_sched.get("name") if isinstance(saved_sched, dict) else None
    new_name = cfg.scheduler.name if cfg.scheduler else None
    new_schedule = new_name != saved_name or _explicit(overrides, ("scheduler",), ("scheduler", "name"))
    saved_epochs = get_path(saved, "trainer.epochs")
    if cfg.trainer.epochs < done + (batch > 0):
        raise ConfigError(
            f"trainer.epochs: the run has already trained {done} epochs; "
            f"trainer.epochs={cfg.trainer.epochs} would shorten it",
            source,
        )
    if new_schedule:
        if batch > 0:
            raise ConfigError(
                f"scheduler: a new schedule starts at an epoch boundary, and {source} stopped inside epoch "
                f"{done + 1} (batch {batch}); resume from a checkpoint at the end of an epoch",
                source,
            )
        if cfg.scheduler is not None:
            cfg = cfg.with_values({"scheduler.start_epoch": done})
    elif _spans_run(new_name) and cfg.trainer.epochs != saved_epochs:
        again = f"trainkit resume {run} trainer.epochs=N scheduler.name={new_name}"
        if done >= saved_epochs and batch == 0:
            hint = f"to train longer, give the added epochs a schedule of their own: {again}"
        else:
            hint = f"finish it first (trainkit resume {run}), then extend it: {again}"
        raise ConfigError(
            f"trainer.epochs: scheduler '{new_name}' was planned for {saved_epochs} epochs and cannot be "
            f"stretched; {hint}",
            source,
        )
    if cfg.scheduler is not None and get_path(saved, "trainer.limit_batches") != cfg.trainer.limit_batches:
        raise ConfigError(
            f"trainer.limit_batches: changes the steps per epoch that scheduler '{new_name}' counts; "
            "it cannot be changed on a resumed run with a scheduler",
            source,
        )
    new = cfg.to_dict()
    retune = new_schedule or any(_section_changed(saved, new, s) for s in ("optimizer", "scheduler"))
    old_flat, new_flat = _flat(saved), _flat(new)
    changes = {
        k: [old_flat.get(k), new_flat.get(k)]
        for k in dict.fromkeys([*old_flat, *new_flat])
        if k.split(".")[0] in _RECORDED_SECTIONS and old_flat.get(k) != new_flat.get(k)
    }
    if new_schedule:  # one entry for the whole section: the old schedule and the new one
        changes = {k: v for k, v in changes.items() if not k.startswith("scheduler.")}
        changes["scheduler"] = [saved_sched, new.get("scheduler")]
    if not retune and all(k.startswith(_NOT_RECORDED) for k in changes):
        changes = {}
    plan = ResumePlan(cfg, retune, new_schedule, changes)
    plan.complete = _complete(plan, saved, position, run)
    return plan


def train_more(run: str, scheduler: Any, stopped: bool, epochs_done: bool = True) -> str:
    """The command that trains a finished run further: no early stopping for one that stopped
    early, more epochs for one that trained all of its own (with a new schedule for them when
    its schedule was planned over the whole run)."""
    command = f"trainkit resume {run}" + (" trainer.early_stopping=null" if stopped else "")
    if epochs_done:
        command += " trainer.epochs=N" + (f" scheduler.name={scheduler}" if _spans_run(scheduler) else "")
    return command


def _complete(plan: ResumePlan, saved: dict[str, Any], position: TrainState, run: str) -> str | None:
    """Why there is nothing to train (with a command that trains more), or None."""
    cfg = plan.cfg
    name = cfg.scheduler.name if cfg.scheduler else None
    if position.ended_by:  # e.g. a sweep's pruner: the sweep decided, a resume does not undo it
        return f"({position.ended_by}); a run its sweep ended is not continued: train a new run instead"
    if stopped_early(saved, cfg, position):
        stop = early_stop(cfg, position)
        why = f"stopped early: {describe_early_stop(stop)}" if stop else "stopped early"
        return f"({why}); to train on: {train_more(run, name, True, position.epoch >= cfg.trainer.epochs)}"
    if position.epoch < cfg.trainer.epochs:
        return None
    return f"({position.epoch}/{cfg.trainer.epochs} epochs); to train longer: {train_more(run, name, False)}"


def stopped_early(saved: dict[str, Any], cfg: ExperimentConfig, position: TrainState) -> bool:
    """Whether the run stays stopped: a run that stopped early continues when the resume
    removes or relaxes its early stopping (same metric: the count of epochs without
    improvement is kept and compared with the new patience)."""
    if not position.stopped_early:
        return False
    if position.ended_by:
        return True
    stopper = cfg.trainer.early_stopping
    if stopper is None:
        return False
    old = get_path(saved, "trainer.early_stopping") or {}
    if old.get("metric") != stopper.metric or old.get("mode") != stopper.mode:
        return False  # another criterion: it starts counting afresh
    return position.bad_epochs >= stopper.patience


def continue_early_stopping(saved: dict[str, Any], cfg: ExperimentConfig, state: TrainState) -> None:
    """Bring the restored loop state in line with the resumed run's early stopping."""
    stopper = cfg.trainer.early_stopping
    old = get_path(saved, "trainer.early_stopping") or {}
    if stopper is not None and (old.get("metric"), old.get("mode")) != (stopper.metric, stopper.mode):
        state.stop_metric_best, state.bad_epochs = None, 0
    state.stopped_early = stopped_early(saved, cfg, state)
