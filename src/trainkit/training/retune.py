"""Applying what a resume changes about the optimizer and the schedule, exactly.

A checkpoint holds the optimizer's state, param-group hyperparameters included, and the
scheduler's state (StepLR keeps its gamma, OneCycleLR its whole plan). Loading them as they
are would quietly undo `optimizer.lr=0.01` on the command line while config.yaml said 0.01.
So when resume_plan.py finds the optimizer's options or the schedule changed:

- every param group gets the hyperparameters the new config gives a freshly built optimizer,
  and the scheduler gets the state a fresh scheduler of the new config has after the same
  number of steps (its base learning rates follow the new `lr`), so from the next step on the
  run trains exactly as the new config says; the optimizer's per-parameter state (momentum
  buffers, Adam's moments) is kept;
- a change the optimizer cannot continue from the checkpoint's state (Adam's amsgrad needs
  state it never made) or an option it keeps nowhere it can be changed is refused (exit 2);
- metrics.jsonl gets a "change" record at the step where the change took effect.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch

from trainkit.config import ExperimentConfig
from trainkit.errors import ConfigError, UsageError
from trainkit.registry import OPTIMIZERS
from trainkit.training.build import build_optimizer, build_scheduler
from trainkit.training.loop import Run, TrainState
from trainkit.training.resume_plan import ResumePlan


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
