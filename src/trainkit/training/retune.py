"""What a resume may change about the run it continues, and how the change is applied exactly.

A checkpoint holds the optimizer's state, param-group hyperparameters included, and the
scheduler's state (StepLR keeps its gamma, OneCycleLR its whole plan). Loading them as they
are would quietly undo `optimizer.lr=0.01` on the command line while config.yaml said 0.01.
So a resume that changes the optimizer's options or the schedule applies the change:

- every param group gets the hyperparameters the new config gives a freshly built optimizer,
  and the scheduler gets the state a fresh scheduler of the new config has after the same
  number of steps (its base learning rates follow the new `lr`), so from the next step on
  the run trains exactly as the new config says; the optimizer's per-parameter state
  (momentum buffers, Adam's moments) is kept;
- a change that would need per-parameter state the optimizer does not have (Adam's amsgrad,
  RMSprop's centered) or an option the optimizer keeps nowhere it can be changed is refused
  (exit 2), as is one the schedule cannot follow;
- metrics.jsonl gets a "change" record at the step where the change took effect.

An explicit `scheduler.name=...` on resume gives the run a new schedule from the current
epoch on, planned over the epochs still to train (recorded as `scheduler.start_epoch`): the
way to extend a finished one-cycle or cosine run without rewriting the steps already taken.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from trainkit.config import ExperimentConfig, get_path, parse_override, read_yaml_file
from trainkit.errors import ConfigError, RunExistsError, TrainkitError, UsageError
from trainkit.registry import OPTIMIZERS, SCHEDULERS
from trainkit.runfolder.folder import RunFolder
from trainkit.runfolder.runlog import read_status
from trainkit.training.build import build_optimizer, build_scheduler
from trainkit.training.loop import Run, TrainState
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


# ------------------------------------------------------------------ applying the change


def _hyperparameters(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    return [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]


def _step_after_change(name: str, old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    """What a resumed optimizer does, on a two-number parameter: a step with the old options
    (the state a checkpoint holds), then the new options' hyperparameters, then a step. Returns
    the new options' param groups; raises what the optimizer raises if it cannot continue."""
    probe = torch.nn.Parameter(torch.zeros(2))
    probe.grad = torch.ones(2)
    optimizer = OPTIMIZERS.build(name, old, params=[probe])
    optimizer.step()
    groups = _hyperparameters(OPTIMIZERS.build(name, new, params=[torch.nn.Parameter(torch.zeros(2))]))
    for group, values in zip(optimizer.param_groups, groups, strict=True):
        group.update(values)
    optimizer.step()
    return groups


def _check_optimizer_change(saved: dict[str, Any], cfg: ExperimentConfig, source: str) -> None:
    """Refuse an optimizer change the checkpoint's state cannot follow exactly."""
    old_options = {k: v for k, v in (saved.get("optimizer") or {}).items() if k != "name"}
    new_options = cfg.optimizer.options()
    changed = sorted(k for k in set(old_options) | set(new_options) if old_options.get(k) != new_options.get(k))
    if not changed:
        return
    keys, name = ", ".join(f"optimizer.{k}" for k in changed), cfg.optimizer.name
    try:
        groups = _step_after_change(name, old_options, new_options)
    except KeyError as exc:  # per-parameter state the old options never made (Adam's amsgrad, ...)
        raise ConfigError(
            f"{keys}: optimizer '{name}' would need per-parameter state the checkpoint does not hold "
            f"({exc.args[0] if exc.args else exc}); start a new run instead",
            source,
        ) from None
    except Exception as exc:  # anything else an optimizer (a user's too) cannot continue from
        raise ConfigError(
            f"{keys}: optimizer '{name}' cannot continue from the checkpoint's state with this change "
            f"({type(exc).__name__}: {exc}); start a new run instead",
            source,
        ) from None
    hidden = [k for k in changed if not all(k in group for group in groups)]
    if hidden:
        raise ConfigError(
            f"{', '.join(f'optimizer.{k}' for k in hidden)}: optimizer '{name}' does not keep this "
            "option in its parameter groups, so a resumed run cannot change it; start a new run instead",
            source,
        )


def apply_changes(
    plan: ResumePlan,
    saved: dict[str, Any],
    run: Run,
    module: torch.nn.Module,
    scheduler_state: dict[str, Any] | None,
    state: TrainState,
    source: str,
) -> None:
    """Give the restored optimizer the new config's hyperparameters and the scheduler the
    state the new config's scheduler has after the steps it covers (see the module doc)."""
    if not plan.retune:
        return
    cfg = plan.cfg
    _check_optimizer_change(saved, cfg, source)
    steps_per_epoch = math.ceil(len(run.train_batches) / run.accumulate)
    fresh = build_optimizer(cfg, module)  # over the same parameters; no state until it steps
    schedule = build_scheduler(cfg, fresh, steps_per_epoch)
    if len(fresh.param_groups) != len(run.optimizer.param_groups):
        raise UsageError(
            f"{source}: the optimizer has {len(run.optimizer.param_groups)} parameter groups but the new config "
            f"builds {len(fresh.param_groups)}; start a new run instead"
        )
    if schedule is not None:
        _replay(schedule, fresh, _steps_taken(plan, scheduler_state, state, steps_per_epoch))
    for group, new in zip(run.optimizer.param_groups, _hyperparameters(fresh), strict=True):
        params = group["params"]
        group.clear()  # keys an old scheduler added (initial_lr, max_lr) must not linger
        group.update(new)
        group["params"] = params
    if schedule is not None:
        run.scheduler.load_state_dict(schedule.state_dict())


def _steps_taken(
    plan: ResumePlan, scheduler_state: dict[str, Any] | None, state: TrainState, steps_per_epoch: int
) -> int:
    """How many steps the current schedule has run: 0 for a new one, else its own count."""
    if plan.new_schedule:
        return 0
    counted = (scheduler_state or {}).get("last_epoch")
    if isinstance(counted, int) and not isinstance(counted, bool) and counted >= 0:
        return counted
    start = plan.cfg.scheduler.start_epoch if plan.cfg.scheduler else 0
    return max(0, state.step - start * steps_per_epoch)


def _replay(scheduler: Any, optimizer: torch.optim.Optimizer, steps: int) -> None:
    """Step a fresh scheduler `steps` times (its learning rates are a function of the step,
    so this is where the new config's schedule stands now). Cheap: no tensors involved."""
    optimizer._opt_called = True  # type: ignore[attr-defined]  # it never steps: no "step order" warning
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(steps):
            scheduler.step()


def change_record(plan: ResumePlan, state: TrainState, run: Run) -> dict[str, Any] | None:
    """The metrics.jsonl line that says what changed, and from which step on."""
    if not plan.changes:
        return None
    return {
        "type": "change",
        "epoch": state.epoch + 1,
        "step": state.step,
        "changes": plan.changes,
        "lr": run.optimizer.param_groups[0]["lr"],
    }


def describe_changes(record: dict[str, Any]) -> str:
    parts = []
    for key, (old, new) in record["changes"].items():
        if key == "scheduler":
            name = f"a new {new['name']} schedule" if new else "no schedule"
            parts.append(f"{name} (was {old['name'] if old else 'none'})")
        elif not key.startswith("scheduler."):
            parts.append(f"{key} {old} -> {new}")
    return f"from step {record['step']} (epoch {record['epoch']}): " + ", ".join(parts)
