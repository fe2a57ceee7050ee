"""Fine-tuning moves: freeze parameters, per-group optimizer options, unfreeze at an epoch.

- `model.freeze`: glob patterns over parameter names (`fnmatch`, so `layer1.*` spans dots).
  Matching parameters get requires_grad=False and stay out of the optimizer, so they end
  a run bit-identical. `model.freeze_bn` keeps the batch norms of the frozen parts in eval
  mode (running statistics fixed, normalised with them).
- `optimizer.param_groups`: each parameter goes to the first group whose pattern matches
  it, the rest to the default group (the optimizer's own options), which comes first so
  records' `lr` is the base rate. `optimizer.no_decay_norm_and_bias` splits every group
  into parameters with weight decay and biases / 1-d (normalisation) weights without it.
- `trainer.unfreeze_at_epoch: N`: at the start of epoch N the frozen parameters join the
  optimizer in the group they belong to, so they train at that group's (scheduled) lr.

The optimizer's group layout is fixed when it is built, frozen parameters included
(a group may start empty), so the groups' indices, and the schedulers' per-group state,
never change. A resume rebuilds the same layout and replays the unfreeze of the epoch it
stopped in before it loads the optimizer's state (restore.py), so the state fits exactly.
"""

from __future__ import annotations

import fnmatch
import logging
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from trainkit.config import ExperimentConfig
from trainkit.errors import ConfigError

log = logging.getLogger("trainkit")


def _matching(patterns: list[str], name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _nothing_matched(key: str, pattern: str, names: list[str]) -> ConfigError:
    sample = ", ".join(names[:6])
    return ConfigError(
        f"{key}: '{pattern}' matches no parameter; the model's parameter names look like {sample}"
        f"{', ...' if len(names) > 6 else ''} ({len(names)} in all)"
    )


@dataclass
class Plan:
    """Which parameters are frozen, and the optimizer's parameter groups (frozen ones left out)."""

    frozen: list[str]  # parameter names, in the model's order
    groups: list[dict[str, Any]]  # torch param groups: {"params": [...], **options}
    group_of: dict[str, int] = field(default_factory=dict)  # parameter name -> index in groups

    @property
    def custom(self) -> bool:
        return bool(self.frozen) or len(self.groups) > 1 or any(len(g) > 1 for g in self.groups)


def plan(cfg: ExperimentConfig, module: nn.Module) -> Plan:
    named = list(module.named_parameters())
    names = [n for n, _ in named]
    freeze = cfg.model.freeze
    for pattern in freeze:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            raise _nothing_matched("model.freeze", pattern, names)
    frozen = [n for n in names if _matching(freeze, n)]
    if frozen and len(frozen) == len(names):
        raise ConfigError(f"model.freeze: matches every parameter of the model ({len(names)}); nothing would train")
    user_groups = cfg.optimizer.param_groups
    for i, group in enumerate(user_groups):
        for pattern in group.patterns():
            if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
                raise _nothing_matched(f"optimizer.param_groups[{i}].params", pattern, names)
    no_decay = cfg.optimizer.no_decay_norm_and_bias
    # logical group 0 = the default group, then the user's; each split by decay when asked
    slots: dict[tuple[int, bool], list[str]] = {}
    for name, param in named:
        logical = next((i + 1 for i, g in enumerate(user_groups) if _matching(g.patterns(), name)), 0)
        decays = not (no_decay and (param.ndim <= 1 or name.endswith(".bias")))
        slots.setdefault((logical, decays), []).append(name)
    by_name = dict(named)
    groups: list[dict[str, Any]] = []
    group_of: dict[str, int] = {}
    for logical, decays in sorted(slots, key=lambda s: (s[0], not s[1])):
        options = dict(user_groups[logical - 1].options()) if logical else {}
        if not decays:
            options["weight_decay"] = 0.0
        members = slots[(logical, decays)]
        for name in members:
            group_of[name] = len(groups)
        groups.append({"params": [by_name[n] for n in members if n not in frozen], **options})
    return Plan(frozen, groups, group_of)


def check_group_options(cfg: ExperimentConfig, optimizer: torch.optim.Optimizer) -> None:
    """Per-group keys the built optimizer does not know would be silently ignored by torch;
    YAML lists become tuples where torch keeps tuples (Adam's betas)."""
    for group in optimizer.param_groups:
        for key, value in group.items():
            if isinstance(value, list) and key != "params" and isinstance(optimizer.defaults.get(key), tuple):
                group[key] = tuple(value)
    for i, user_group in enumerate(cfg.optimizer.param_groups):
        for key in user_group.options():
            if key not in optimizer.defaults:
                raise ConfigError(
                    f"optimizer.param_groups[{i}].{key}: optimizer '{cfg.optimizer.name}' does not take '{key}' "
                    f"per parameter group (its groups take {', '.join(sorted(optimizer.defaults))})"
                )
    if cfg.optimizer.no_decay_norm_and_bias and "weight_decay" not in optimizer.defaults:
        raise ConfigError(f"optimizer.no_decay_norm_and_bias: optimizer '{cfg.optimizer.name}' has no weight_decay")


def _stay_in_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(self, False)


class Finetune:
    """Freezing at build time and the unfreeze at the start of trainer.unfreeze_at_epoch."""

    def __init__(self, cfg: ExperimentConfig, module: nn.Module, plan_: Plan, rewrap: Callable[[], Any]):
        self.module, self.plan, self.rewrap = module, plan_, rewrap
        self.unfreeze_at = cfg.trainer.unfreeze_at_epoch
        self.unfrozen = False
        params = dict(module.named_parameters())
        self.frozen_params = [(name, params[name]) for name in plan_.frozen]
        for _, param in self.frozen_params:
            param.requires_grad_(False)
        self.fixed_bn: list[nn.Module] = []
        if cfg.model.freeze_bn:
            frozen = set(plan_.frozen)
            for name, child in module.named_modules():
                own = [f"{name}.{p}" if name else p for p, _ in child.named_parameters(recurse=False)]
                if isinstance(child, nn.modules.batchnorm._BatchNorm) and own and set(own) <= frozen:
                    child.train = types.MethodType(_stay_in_eval, child)  # type: ignore[method-assign]
                    child.eval()
                    self.fixed_bn.append(child)

    def before_epoch(self, run: Any, epoch: int) -> None:
        """Called by the loop at the start of each epoch (0-based), and by a resume for the
        epoch it stopped in: unfreeze once epoch `unfreeze_at_epoch` (1-based) is reached."""
        if self.unfreeze_at is None or self.unfrozen or epoch + 1 < self.unfreeze_at:
            return
        self.unfrozen = True
        groups = run.optimizer.param_groups
        for name, param in self.frozen_params:
            param.requires_grad_(True)
            groups[self.plan.group_of[name]]["params"].append(param)
        for bn in self.fixed_bn:
            del bn.train  # the class's own train() again
            bn.train(self.module.training)
        run.model = self.rewrap()  # DDP reduces only what required grad when it was built
        log.info(f"epoch {epoch + 1}: {len(self.frozen_params)} frozen parameters join the optimizer (model.freeze)")


def unused_parameters(module: nn.Module, input_shape: tuple[int, ...]) -> list[str] | None:
    """Trainable parameters that get no gradient from a forward/backward pass, computed on the
    meta device (no memory, no random draws, the module's tensors untouched); None when the
    model cannot run there. DDP must be told (find_unused_parameters) only if there are some."""
    params = {
        n: torch.empty_like(p, device="meta").requires_grad_(p.requires_grad) for n, p in module.named_parameters()
    }
    buffers = {n: torch.empty_like(b, device="meta") for n, b in module.named_buffers()}
    try:
        x = torch.empty((2, *input_shape), device="meta")
        out = torch.func.functional_call(module, {**params, **buffers}, (x,))
        outputs = out if isinstance(out, (tuple, list)) else [out]
        total = sum(o.float().sum() for o in outputs if isinstance(o, torch.Tensor) and o.requires_grad)
        if isinstance(total, torch.Tensor):
            total.backward()
    except Exception:
        return None
    return [n for n, p in params.items() if p.requires_grad and p.grad is None]
