"""Built-in optimizers and learning-rate schedulers.

Thin, explicitly typed wrappers around torch.optim: the signatures are what the config
is validated against (`optimizer.lr: -1` is a config error, not a ValueError mid-run).
Every scheduler steps once per optimizer step; the loop supplies the step counts.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from trainkit.errors import ConfigError
from trainkit.registry import OPTIMIZERS, SCHEDULERS

LearningRate = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]
Unit = Annotated[float, Field(ge=0, lt=1)]
Betas = Annotated[list[Unit], Field(min_length=2, max_length=2)]


@OPTIMIZERS.register("sgd")
def sgd(
    params,
    lr: LearningRate,
    momentum: NonNegative = 0.0,
    weight_decay: NonNegative = 0.0,
    nesterov: bool = False,
    dampening: NonNegative = 0.0,
):
    """Stochastic gradient descent (torch.optim.SGD)."""
    import torch

    if nesterov and (momentum <= 0 or dampening != 0):
        raise ConfigError("optimizer.nesterov: needs momentum > 0 and dampening = 0")
    return torch.optim.SGD(
        params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov, dampening=dampening
    )


@OPTIMIZERS.register("adam")
def adam(
    params,
    lr: LearningRate = 1e-3,
    betas: Betas = [0.9, 0.999],
    eps: Annotated[float, Field(gt=0)] = 1e-8,
    weight_decay: NonNegative = 0.0,
    amsgrad: bool = False,
):
    """Adam (torch.optim.Adam)."""
    import torch

    return torch.optim.Adam(
        params, lr=lr, betas=(betas[0], betas[1]), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad
    )


@OPTIMIZERS.register("adamw")
def adamw(
    params,
    lr: LearningRate = 1e-3,
    betas: Betas = [0.9, 0.999],
    eps: Annotated[float, Field(gt=0)] = 1e-8,
    weight_decay: NonNegative = 0.01,
    amsgrad: bool = False,
):
    """Adam with decoupled weight decay (torch.optim.AdamW)."""
    import torch

    return torch.optim.AdamW(
        params, lr=lr, betas=(betas[0], betas[1]), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad
    )


@OPTIMIZERS.register("rmsprop")
def rmsprop(
    params,
    lr: LearningRate = 1e-2,
    alpha: Unit = 0.99,
    eps: Annotated[float, Field(gt=0)] = 1e-8,
    weight_decay: NonNegative = 0.0,
    momentum: NonNegative = 0.0,
    centered: bool = False,
):
    """RMSprop (torch.optim.RMSprop)."""
    import torch

    return torch.optim.RMSprop(
        params, lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum, centered=centered
    )


@OPTIMIZERS.register("adadelta")
def adadelta(
    params,
    lr: LearningRate = 1.0,
    rho: Unit = 0.9,
    eps: Annotated[float, Field(gt=0)] = 1e-6,
    weight_decay: NonNegative = 0.0,
):
    """Adadelta (torch.optim.Adadelta), as in the classic PyTorch MNIST example."""
    import torch

    return torch.optim.Adadelta(params, lr=lr, rho=rho, eps=eps, weight_decay=weight_decay)


@SCHEDULERS.register("step")
def step(
    optimizer,
    steps_per_epoch: int,
    step_size: Annotated[int, Field(gt=0)] = 1,
    gamma: Annotated[float, Field(gt=0)] = 0.1,
):
    """Multiply the learning rate by `gamma` every `step_size` epochs (torch StepLR)."""
    import torch

    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size * steps_per_epoch, gamma=gamma)


@SCHEDULERS.register("cosine", spans_run=True)
def cosine(optimizer, total_steps: int, min_lr: NonNegative = 0.0):
    """Cosine decay from the optimizer's lr (each parameter group's own) to `min_lr` over the whole run."""
    import torch

    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps, eta_min=min_lr)


@SCHEDULERS.register("onecycle", spans_run=True)
def onecycle(
    optimizer,
    total_steps: int,
    max_lr: LearningRate | None = None,
    pct_start: Annotated[float, Field(gt=0, lt=1)] = 0.3,
    anneal_strategy: Literal["cos", "linear"] = "cos",
    div_factor: Annotated[float, Field(gt=0)] = 25.0,
    final_div_factor: Annotated[float, Field(gt=0)] = 1e4,
    cycle_momentum: bool = True,
    three_phase: bool = False,
):
    """One-cycle policy over the whole run; `max_lr` defaults to the optimizer's lr."""
    import torch

    peak: float | list[float]
    if len(optimizer.param_groups) == 1:
        peak = optimizer.param_groups[0]["lr"] if max_lr is None else max_lr
    else:  # parameter groups: each peaks at its own lr (scaled alike when max_lr is given)
        base = optimizer.defaults["lr"]
        peak = [g["lr"] if max_lr is None else g["lr"] / base * max_lr for g in optimizer.param_groups]
    defaults = optimizer.defaults
    if "momentum" in defaults:
        # cycling would silently turn momentum-free SGD/RMSprop into momentum methods
        cycle_momentum = cycle_momentum and bool(defaults["momentum"])
    elif "betas" not in defaults:
        cycle_momentum = False  # e.g. Adadelta: nothing to cycle
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=peak,
        total_steps=total_steps,
        pct_start=pct_start,
        anneal_strategy=anneal_strategy,
        div_factor=div_factor,
        final_div_factor=final_div_factor,
        cycle_momentum=cycle_momentum,
        three_phase=three_phase,
    )
