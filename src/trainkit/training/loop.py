"""The one train/eval loop shared by every model and data set.

It knows nothing of YAML, files or the CLI: what to build came in a `Run`, and whatever
must leave the loop (log records, checkpoints, a stop request) goes through `Events`.

Speed notes: the step does no host-device sync. Each batch loss is written into a
device buffer; the host reads that buffer only every `log_every` steps, before a
checkpoint and at the end of an epoch, and checks it for NaN/inf then.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from trainkit.errors import NonFiniteLossError
from trainkit.training.batches import Batches
from trainkit.training.distributed import DistContext


@dataclass
class TrainState:
    """Where training stands; everything here goes into the checkpoint."""

    epoch: int = 0  # epochs completed
    batch: int = 0  # batches of the epoch in progress already trained (per process)
    step: int = 0  # optimizer steps taken
    epoch_start_step: int = 0
    epoch_losses: list[float] = field(default_factory=list)  # batch losses of the epoch in progress
    logged_batch: int = 0  # batches of this epoch already covered by a "train" log record
    best_metric: float | None = None
    best_epoch: int | None = None
    stop_metric_best: float | None = None  # early stopping's own best (it may watch another metric)
    bad_epochs: int = 0  # epochs without improvement, for early stopping
    stopped_early: bool = False

    def to_dict(self) -> dict[str, Any]:
        # a snapshot: the loop keeps appending to epoch_losses after a checkpoint is made
        return {k: list(v) if isinstance(v, list) else v for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainState:
        """The state a checkpoint saved; TypeError/ValueError name a field of the wrong kind."""
        state = cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})
        for name in ("epoch", "batch", "step", "epoch_start_step", "logged_batch", "bad_epochs"):
            value = getattr(state, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} is {value!r}")
        if not isinstance(state.epoch_losses, list) or not all(isinstance(v, (int, float)) for v in state.epoch_losses):
            raise ValueError("epoch_losses is not a list of numbers")
        if len(state.epoch_losses) > state.batch or state.logged_batch > state.batch:
            raise ValueError(f"batch {state.batch} is behind its own loss history")
        for name in ("best_metric", "stop_metric_best"):
            if getattr(state, name) is not None and not isinstance(getattr(state, name), (int, float)):
                raise ValueError(f"{name} is {getattr(state, name)!r}")
        return state


class StopTraining(Exception):
    """Raised by the loop when a stop was requested (SIGINT/SIGTERM) and the state is saved;
    the Events' owner turns it into TrainingInterrupted with the run's details."""

    def __init__(self, step: int):
        super().__init__(f"stopped at step {step}")
        self.step = step


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The forward pass's precision: fp32 as is, bf16 or fp16 through torch.autocast."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


@dataclass
class Run:
    """Everything built for training, on its device."""

    model: torch.nn.Module  # what the step calls (maybe DDP-wrapped and/or compiled)
    eval_model: torch.nn.Module  # unwrapped from DDP: every rank evaluates its own shard
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any  # torch.amp.GradScaler for fp16 on CUDA, else None
    train_batches: Batches
    eval_batches: Batches
    task: str  # "classification" | "regression"
    device: torch.device
    dist: DistContext
    epochs: int
    log_every: int = 50
    every_n_steps: int = 0
    accumulate: int = 1
    grad_clip: float | None = None
    precision: str = "fp32"
    label_smoothing: float = 0.0  # training loss only: validation reports plain cross-entropy
    early_stopping: Any = None  # EarlyStoppingConfig or None
    monitor: tuple[str, str] = ("val_accuracy", "max")  # which epoch metric makes best.pt
    # called as before_epoch(run, epoch) at the start of each epoch (0-based), and by a resume
    # for the epoch it stopped in: what changes the optimizer's layout (finetune.py's unfreeze)
    before_epoch: Callable[[Run, int], None] | None = None

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.precision)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        output = output.float()
        if self.task == "classification":
            return F.cross_entropy(output, target, label_smoothing=self.label_smoothing)
        return F.mse_loss(output, target.view_as(output))


class Events(Protocol):
    """What leaves the loop: records, checkpoints, and the question whether to stop."""

    def log(self, record: dict[str, Any]) -> None: ...
    def save(self, state: TrainState, is_best: bool) -> None: ...
    def stop_requested(self, state: TrainState) -> bool: ...
    def progress(self, epoch: int, total: int, start: int) -> Any: ...


def fit(run: Run, state: TrainState, events: Events) -> TrainState:
    """Epochs of train_one_epoch then evaluate, from wherever `state` stands."""
    while state.epoch < run.epochs and not state.stopped_early:
        started = time.time()
        if run.before_epoch is not None:
            run.before_epoch(run, state.epoch)
        train_loss = train_one_epoch(run, state, events)
        metrics = evaluate(run.eval_model, run.eval_batches, run.task, run.device, run.dist, run.precision)
        record = {
            "type": "epoch",
            "epoch": state.epoch + 1,
            "step": state.step,
            "train_loss": train_loss,
            **{f"val_{k}": v for k, v in metrics.items() if k != "samples"},
            "lr": run.optimizer.param_groups[0]["lr"],
            "epoch_time": time.time() - started,
        }
        is_best = _update_best(run, state, record)
        state.epoch, state.batch, state.logged_batch, state.epoch_losses = state.epoch + 1, 0, 0, []
        state.epoch_start_step = state.step
        events.log(record)
        events.save(state, is_best)
        if events.stop_requested(state):
            raise StopTraining(state.step)  # the epoch's checkpoint is the stop's checkpoint
    return state


def _update_best(run: Run, state: TrainState, record: dict[str, Any]) -> bool:
    key, mode = run.monitor
    value = record.get(key)
    better = value is not None and (
        state.best_metric is None or (value > state.best_metric if mode == "max" else value < state.best_metric)
    )
    if better:
        state.best_metric, state.best_epoch = value, state.epoch + 1
    stopper = run.early_stopping
    if stopper is not None and stopper.metric in record:
        current, best = record[stopper.metric], state.stop_metric_best
        improved = best is None or (
            current < best - stopper.min_delta if stopper.mode == "min" else current > best + stopper.min_delta
        )
        state.bad_epochs = 0 if improved else state.bad_epochs + 1
        if improved:
            state.stop_metric_best = current
        state.stopped_early = state.bad_epochs >= stopper.patience
    return better


def train_one_epoch(run: Run, state: TrainState, events: Events) -> float:
    """Train from batch `state.batch` of epoch `state.epoch` to its end; returns the mean batch loss."""
    model, batches = run.model, run.train_batches
    model.train()
    total = len(batches)
    losses = torch.zeros(total, device=run.device)  # one slot per batch: no sync per step
    if state.epoch_losses:
        losses[: len(state.epoch_losses)] = torch.tensor(state.epoch_losses)
    bar = events.progress(state.epoch, total, state.batch)
    for b, (x, y) in enumerate(batches(state.epoch, state.batch), start=state.batch):
        last_of_group = (b + 1) % run.accumulate == 0 or b + 1 == total
        no_sync = run.dist.enabled and not last_of_group and hasattr(model, "no_sync")
        with model.no_sync() if no_sync else contextlib.nullcontext():  # type: ignore[operator]
            with run.autocast():
                loss = run.loss(model(x), y)
            scaled = loss / run.accumulate if run.accumulate > 1 else loss
            (run.scaler.scale(scaled) if run.scaler else scaled).backward()
        losses[b] = loss.detach()
        state.batch = b + 1
        if bar is not None:
            bar.update(1)
        if not last_of_group:
            continue
        _optimizer_step(run)
        state.step += 1
        if state.step % run.log_every == 0:
            _log_window(run, state, losses, events)
        if state.batch < total and run.every_n_steps and state.step % run.every_n_steps == 0:
            _read_losses(run, state, losses)
            events.save(state, False)
        if state.batch < total and events.stop_requested(state):
            _read_losses(run, state, losses)
            events.save(state, False)
            raise StopTraining(state.step)
    if bar is not None:
        bar.close()
    return _global_mean(run, _read_losses(run, state, losses))


def _optimizer_step(run: Run) -> None:
    if run.grad_clip:
        if run.scaler is not None:
            run.scaler.unscale_(run.optimizer)  # clip the true gradients, not the scaled ones
        params = [p for group in run.optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, run.grad_clip)
    if run.scaler is not None:
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    if run.scheduler is not None:
        run.scheduler.step()


def _read_losses(run: Run, state: TrainState, losses: torch.Tensor) -> list[float]:
    """Copy the batch losses not yet on the host (a sync) and stop on the first NaN/inf;
    returns all of this epoch's losses. Only the new ones cross, so an epoch of many
    batches does not copy its whole history at every log step."""
    start = len(state.epoch_losses)
    new = losses[start : state.batch].tolist() if state.batch > start else []
    for offset, value in enumerate(new):
        if not math.isfinite(value):
            step = state.epoch_start_step + (start + offset) // run.accumulate + 1
            raise NonFiniteLossError(state.epoch + 1, step, value)
    state.epoch_losses.extend(new)
    return state.epoch_losses


def _global_mean(run: Run, values: list[float]) -> float:
    """Mean batch loss over every process (each has the same number of batches)."""
    mean = sum(values) / len(values) if values else float("nan")
    if run.dist.enabled:
        total = run.dist.all_reduce_sum(torch.tensor([mean], dtype=torch.float64, device=run.device))
        mean = total.item() / run.dist.world_size
    return mean


def _log_window(run: Run, state: TrainState, losses: torch.Tensor, events: Events) -> None:
    values = _read_losses(run, state, losses)[state.logged_batch : state.batch]
    state.logged_batch = state.batch
    mean = _global_mean(run, values)
    lr = run.optimizer.param_groups[0]["lr"]
    events.log({"type": "train", "epoch": state.epoch + 1, "step": state.step, "loss": mean, "lr": lr})


@torch.inference_mode()
def evaluate(
    model: torch.nn.Module,
    batches: Batches,
    task: str,
    device: torch.device,
    dist: DistContext | None = None,
    precision: str = "fp32",
) -> dict[str, float]:
    """Loss and accuracy (classification) or MSE and MAE (regression) over every sample, all ranks."""
    dist = dist or DistContext()
    was_training = model.training
    model.eval()
    sums = torch.zeros(2, device=device)  # loss sum, abs-error sum
    counts = torch.zeros(2, dtype=torch.int64, device=device)  # correct, samples
    outputs = 1
    for x, y in batches():
        with autocast(device, precision):
            out = model(x).float()
        if task == "classification":
            sums[0] += F.cross_entropy(out, y, reduction="sum")
            counts[0] += (out.argmax(1) == y).sum()
        else:
            target = y.view_as(out)
            sums[0] += F.mse_loss(out, target, reduction="sum")
            sums[1] += (out - target).abs().sum()
            outputs = out[0].numel()
        counts[1] += len(y)
    dist.all_reduce_sum(sums)
    dist.all_reduce_sum(counts)
    model.train(was_training)
    (loss_sum, abs_sum), (correct, samples) = sums.tolist(), counts.tolist()
    if samples == 0:
        return {"samples": 0}
    if task == "classification":
        return {"samples": samples, "loss": loss_sum / samples, "accuracy": correct / samples}
    mse = loss_sum / (samples * outputs)
    return {"samples": samples, "loss": mse, "mse": mse, "mae": abs_sum / (samples * outputs)}
