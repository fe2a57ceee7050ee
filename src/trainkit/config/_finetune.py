"""Checks of the fine-tuning keys that span sections or depend on the optimizer picked:
`optimizer.param_groups` options (validated as the optimizer's own options are),
`trainer.unfreeze_at_epoch` and `model.freeze_bn` against `model.freeze`.

What needs the model's parameter names (a pattern that matches nothing, freezing
everything) is checked when the model is built (training/finetune.py).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from trainkit.config._sections import ExperimentConfig
from trainkit.config._yaml import KeyPath
from trainkit.registry import OPTIMIZERS, did_you_mean


def param_group_problems(raw: Any, resolved: dict[str, Any] | None) -> list[tuple[KeyPath, str]]:
    """Each group's options checked against the optimizer's signature, on top of the
    section's own (so a required `lr` given once is not asked for again)."""
    from trainkit.config._validate import _pydantic_problems, options_model

    groups = raw.get("param_groups") if isinstance(raw, dict) else None
    if resolved is None or not isinstance(groups, list):
        return []  # the optimizer itself is wrong (reported already), or no groups
    name = raw["name"]
    known = OPTIMIZERS.options(name)
    model = options_model(OPTIMIZERS, name)
    problems: list[tuple[KeyPath, str]] = []
    for i, group in enumerate(groups):
        if not isinstance(group, dict):
            continue  # the structural pass reports it
        given = {k: v for k, v in group.items() if k != "params"}
        where: KeyPath = ("optimizer", "param_groups", i)
        for key in given:
            if key not in known:
                listing = ", ".join(known) or "none"
                problems.append(
                    (
                        (*where, key),
                        f"optimizer '{name}' has no option '{key}'{did_you_mean(key, known)} (options: {listing})",
                    )
                )
        try:
            model.model_validate({**resolved, **{k: v for k, v in given.items() if k in known}})
        except ValidationError as exc:
            for problem in _pydantic_problems(exc, where):
                if problem.path[len(where) : len(where) + 1] and problem.path[len(where)] in given:
                    problems.append((problem.path, problem.message))
    return problems


def cross_problems(config: ExperimentConfig) -> list[tuple[KeyPath, str]]:
    problems: list[tuple[KeyPath, str]] = []
    unfreeze, epochs = config.trainer.unfreeze_at_epoch, config.trainer.epochs
    if unfreeze is not None and not config.model.freeze:
        problems.append((("trainer", "unfreeze_at_epoch"), "needs model.freeze: the parameters to unfreeze"))
    elif unfreeze is not None and unfreeze > epochs:
        problems.append(
            (("trainer", "unfreeze_at_epoch"), f"{unfreeze} is past the last epoch (trainer.epochs is {epochs})")
        )
    if config.model.freeze_bn and not config.model.freeze:
        problems.append((("model", "freeze_bn"), "needs model.freeze: the parts whose batch norm to keep fixed"))
    return problems
