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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from trainkit.errors import NonFiniteLossError, TrainkitError
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
    ended_by: str | None = None  # a sink ended the run on purpose ("pruned"): it is never continued

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
        if not isinstance(state.stopped_early, bool) or not isinstance(state.ended_by, (str, type(None))):
            raise ValueError(f"stopped_early is {state.stopped_early!r}, ended_by {state.ended_by!r}")
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
    def eval_progress(self, total: int) -> Any: ...


def fit(run: Run, state: TrainState, events: Events) -> TrainState:
    """Epochs of train_one_epoch then evaluate, from wherever `state` stands."""
    while state.epoch < run.epochs and not state.stopped_early:
        started = time.time()
        if run.before_epoch is not None:
            run.before_epoch(run, state.epoch)
        train_loss = train_one_epoch(run, state, events)
        bar = events.eval_progress(len(run.eval_batches))
        try:
            metrics = evaluate(run.eval_model, run.eval_batches, run.task, run.device, run.dist, run.precision, bar)
        except TrainkitError:  # e.g. a loader worker died: the epoch's training is kept
            _save_before_failure(run, state, events)
            raise
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
    for b, (x, y) in enumerate(_saved_on_failure(run, state, losses, events), start=state.batch):
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


def _saved_on_failure(
    run: Run, state: TrainState, losses: torch.Tensor, events: Events
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The epoch's batches; if reading one fails (a loader worker died, a bad file), first
    checkpoint what was trained, so the run resumes from there. Not in the middle of an
    accumulation group (its gradients are not saved) nor under DDP (saving is collective,
    and the other ranks are not here): there the last checkpoint stands."""
    try:
        yield from run.train_batches(state.epoch, state.batch)
    except TrainkitError:
        _save_before_failure(run, state, events, losses)
        raise


def _save_before_failure(run: Run, state: TrainState, events: Events, losses: torch.Tensor | None = None) -> None:
    """Checkpoint the state before a failure to read data ends the run (the caller re-raises)."""
    pending = state.batch % run.accumulate != 0 and state.batch != len(run.train_batches)  # unsaved gradients
    if pending or run.dist.enabled:
        return
    try:
        if losses is not None:
            _read_losses(run, state, losses)
        events.save(state, False)
    except TrainkitError:  # the reading error is the one to report
        return
    if events.stop_requested(state):  # a SIGTERM to the whole process group ended the workers too
        raise StopTraining(state.step) from None


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
    bar: Any = None,
) -> dict[str, float]:
    """Loss and accuracy (classification) or loss, MSE, MAE and R² (regression) over every
    sample, all ranks. Regression metrics are in the target's own units: a data set that
    standardised its targets says how in DatasetInfo.target_std, and the loss stays the
    training objective (the MSE of what the model predicts).

    `bar` (a tqdm bar or None) advances once per batch, without reading the device."""
    dist = dist or DistContext()
    was_training = model.training
    model.eval()
    if task != "classification":
        return _evaluate_regression(model, batches, device, dist, precision, was_training, bar)
    sums = torch.zeros(1, device=device)  # loss sum
    counts = torch.zeros(2, dtype=torch.int64, device=device)  # correct, samples
    for x, y in batches():
        with autocast(device, precision):
            out = model(x).float()
        sums[0] += F.cross_entropy(out, y, reduction="sum")
        counts[0] += (out.argmax(1) == y).sum()
        counts[1] += len(y)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    dist.all_reduce_sum(sums)
    dist.all_reduce_sum(counts)
    model.train(was_training)
    (loss_sum,), (correct, samples) = sums.tolist(), counts.tolist()
    if samples == 0:
        return {"samples": 0}
    return {"samples": samples, "loss": loss_sum / samples, "accuracy": correct / samples}


def _evaluate_regression(
    model: torch.nn.Module,
    batches: Batches,
    device: torch.device,
    dist: DistContext,
    precision: str,
    was_training: bool,
    bar: Any = None,
) -> dict[str, float]:
    # Per output, in the model's units: squared and absolute error sums, and the targets' sum
    # and sum of squares for R²'s total variance. float64 where the device has it (MPS has
    # not): a sum of squares over many samples loses digits in float32.
    dtype = torch.float32 if device.type == "mps" else torch.float64
    sums: torch.Tensor | None = None
    samples = torch.zeros(1, dtype=torch.int64, device=device)
    for x, y in batches():
        with autocast(device, precision):
            out = model(x).float()
        out = out.reshape(len(y), -1)
        error = (out - y.reshape(out.shape).float()).to(dtype)
        target = y.reshape(out.shape).to(dtype)
        if sums is None:
            sums = torch.zeros(4, out.shape[1], dtype=dtype, device=device)
        sums[0] += (error * error).sum(0)
        sums[1] += error.abs().sum(0)
        sums[2] += target.sum(0)
        sums[3] += target.square().sum(0)
        samples += len(y)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if sums is None:  # this rank had no samples; the others' sums have the data set's width
        sums = torch.zeros(4, batches.info.num_outputs, dtype=dtype, device=device)
    dist.all_reduce_sum(sums)
    dist.all_reduce_sum(samples)
    model.train(was_training)
    n = int(samples.item())
    if n == 0:
        return {"samples": 0}
    squared, absolute, total, total_sq = (row.tolist() for row in sums.cpu().double())
    width = len(squared)
    std = batches.info.target_std
    scale = list(std) if std is not None and len(std) == width else [1.0] * width
    r2 = []
    for o in range(width):
        # n x the targets' variance. Sums about 0, not about the mean (ranks could not add them
        # otherwise): exact enough in float64 unless the mean is ~1e6 x the spread or more.
        spread = total_sq[o] - total[o] ** 2 / n
        if spread > 1e-13 * total_sq[o]:
            r2.append(1.0 - squared[o] / spread)
        else:  # constant targets: R² is undefined; 1 for exact predictions, else 0 (as scikit-learn)
            r2.append(1.0 if squared[o] == 0 else 0.0)
    loss = sum(squared) / (n * width)
    return {
        "samples": n,
        "loss": loss,
        "mse": sum(s * scale[o] ** 2 for o, s in enumerate(squared)) / (n * width),
        "mae": sum(a * scale[o] for o, a in enumerate(absolute)) / (n * width),
        "r2": sum(r2) / width,
    }
