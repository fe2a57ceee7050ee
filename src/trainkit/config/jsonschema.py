"""The JSON Schema of an experiment config, for editors and CI.

The fixed sections (trainer, checkpoint, ...) come straight from the pydantic models in
config.py. The component sections (model, data, optimizer, scheduler) are open-ended
there (`name:` plus any keys), so here each becomes a `oneOf` with one object per
registered builder: `name` is a constant that picks the branch and the other properties
are that builder's options, built from its signature as `trainkit validate` checks them.
A YAML file starting with

    # yaml-language-server: $schema=../schema/trainkit.schema.json

then gets completion and checking in editors that speak the YAML language server.
Nothing here imports torch.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel

from trainkit.config._sections import DataConfig, ExperimentConfig, ModelConfig, OptimizerConfig, SchedulerConfig
from trainkit.config._validate import options_model
from trainkit.registry import REGISTRIES, Registry

DRAFT = "https://json-schema.org/draft/2020-12/schema"
TITLE = "trainkit experiment config"
DESCRIPTION = (
    "The structure and each component's options; `trainkit validate CONFIG` also checks what "
    "a schema cannot (plugin imports, installed packages)."
)


def _hoist_defs(schema: dict[str, Any], defs: dict[str, Any], where: str) -> dict[str, Any]:
    """Move a sub-schema's $defs into the root's, where its '#/$defs/...' references point."""
    for key, value in schema.pop("$defs", {}).items():
        if key in defs and defs[key] != value:
            raise ValueError(f"{where}: JSON Schema definition '{key}' clashes with another of the same name")
        defs[key] = value
    return schema


def _builder_schema(registry: Registry, name: str, defs: dict[str, Any]) -> dict[str, Any]:
    """One branch of a component's oneOf: {name: <const>, ...options}."""
    try:
        options = options_model(registry, name).model_json_schema()
    except Exception:  # an option type JSON Schema cannot express: check the name, allow any keys
        options = {"type": "object", "additionalProperties": True}
    options = _hoist_defs(options, defs, f"{registry.kind} '{name}'")
    properties = {"name": {"const": name}, **options.get("properties", {})}
    branch: dict[str, Any] = {
        "title": f"{registry.kind} '{name}'",
        "type": "object",
        "properties": properties,
        "required": ["name", *options.get("required", [])],
        "additionalProperties": options.get("additionalProperties", True),
    }
    summary = registry.get(name).summary
    if summary:
        branch["description"] = summary
    return branch


def _family_schema(registry: Registry, prefix: str) -> dict[str, Any]:
    """One branch for a whole family (torchvision.*): too many names to list, options checked by
    `trainkit validate`."""
    return {
        "title": f"{registry.kind}s from {prefix}",
        "description": f"`trainkit ls {registry.kind}s {prefix}` lists the names, "
        f"`trainkit ls {registry.kind}s {prefix}.NAME` their options",
        "type": "object",
        "properties": {"name": {"type": "string", "pattern": f"^{prefix}\\..+"}},
        "required": ["name"],
        "additionalProperties": True,
    }


def _component_schema(registry: Registry, defs: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    branches = []
    for name in registry.names():
        branch = _builder_schema(registry, name, defs)
        # trainkit's own keys of the section (data.batch_size, ...) sit beside the options
        branch["properties"] = {**branch["properties"], **own}
        branches.append(branch)
    families = list(registry.families())
    for prefix in families:
        branch = _family_schema(registry, prefix)
        branch["properties"] = {**branch["properties"], **own}
        branches.append(branch)
    names: dict[str, Any] = {"enum": registry.names()}
    if families:
        patterns = "|".join(families)
        names = {"anyOf": [names, {"type": "string", "pattern": f"^({patterns})\\..+"}]}
    return {
        "description": f"`name` picks a registered {registry.kind}; the other keys are its options "
        f"(`trainkit ls {registry.kind}s` lists them)",
        "type": "object",
        "required": ["name"],
        "properties": {"name": names},
        "oneOf": branches,
    }


def config_schema() -> dict[str, Any]:
    """The full JSON Schema (draft 2020-12) of an experiment YAML file."""
    schema = copy.deepcopy(ExperimentConfig.model_json_schema())
    defs = schema.setdefault("$defs", {})
    own_keys = {}
    sections: dict[str, type[BaseModel]] = {
        "model": ModelConfig,
        "data": DataConfig,
        "optimizer": OptimizerConfig,
        "scheduler": SchedulerConfig,
    }
    for section, model in sections.items():
        own_schema = model.model_json_schema(ref_template="#/$defs/{model}")
        _hoist_defs(own_schema, defs, section)
        own_keys[section] = {k: v for k, v in own_schema["properties"].items() if k != "name"}
    properties = schema["properties"]
    for section, registry in REGISTRIES.items():
        component = _component_schema(registry, defs, own_keys.get(section, {}))
        if section in schema.get("required", []):
            properties[section] = component
        else:  # optional sections (scheduler) may also be null
            properties[section] = {"anyOf": [component, {"type": "null"}], "default": None}
    # The generic component models are replaced by the per-builder branches above.
    for unused in ("ComponentConfig", "DataConfig", "ModelConfig", "OptimizerConfig", "SchedulerConfig"):
        defs.pop(unused, None)
    # `name` may be left out: it then defaults to the config file's stem.
    schema["required"] = [k for k in schema.get("required", []) if k != "name"]
    head = {"$schema": DRAFT, "title": TITLE, "description": DESCRIPTION}
    order = ("type", "required", "additionalProperties", "properties", "$defs")
    return {
        **head,
        **{k: schema[k] for k in order if k in schema},
        **{k: v for k, v in schema.items() if k not in order and k not in head and k != "title"},
    }
