"""`trainkit schema`: the JSON Schema accepts the shipped configs, rejects mistakes, and the
committed schema/trainkit.schema.json is exactly what the command prints."""

from __future__ import annotations

import copy
import json

import pytest
import yaml

from conftest import REPO, tiny_config, write_config
from helpers_ecosystem import PLUGIN

jsonschema = pytest.importorskip("jsonschema")

SHIPPED = sorted((REPO / "configs").glob("*.yaml"))
COMMITTED = REPO / "schema" / "trainkit.schema.json"


@pytest.fixture(scope="module")
def schema() -> dict:
    from typer.testing import CliRunner

    from trainkit.cli import app

    result = CliRunner().invoke(app, ["schema"])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def _errors(schema: dict, config: dict) -> list[str]:
    validator = jsonschema.Draft202012Validator(schema)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(config)]


def test_schema_is_a_valid_draft_2020_12_schema(schema):
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_configs_validate_and_point_at_the_schema(schema, path):
    assert SHIPPED, "no configs found"
    text = path.read_text()
    assert text.startswith("# yaml-language-server: $schema=../schema/trainkit.schema.json")
    assert _errors(schema, yaml.safe_load(text)) == []


def test_committed_schema_file_is_current(schema):
    # If this fails: trainkit schema > schema/trainkit.schema.json
    assert COMMITTED.exists(), "schema/trainkit.schema.json is missing"
    assert json.loads(COMMITTED.read_text()) == schema
    assert COMMITTED.read_text() == json.dumps(schema, indent=2) + "\n"


def _broken(change) -> dict:
    config = yaml.safe_load((REPO / "configs" / "mnist_cnn.yaml").read_text())
    change(config)
    return config


MISTAKES = {
    "unknown top-level key": lambda c: c.update(trainr={"epochs": 2}),
    "unknown trainer key": lambda c: c["trainer"].update(epoch=2),
    "unknown model option": lambda c: c["model"].update(dropot=0.1),
    "unknown data option": lambda c: c["data"].update(n_train=10),
    "unknown model name": lambda c: c["model"].update(name="resnet"),
    "wrong type of option": lambda c: c["optimizer"].update(lr="fast"),
    "wrong type of own key": lambda c: c["data"].update(batch_size="big"),
    "out of range": lambda c: c["trainer"].update(epochs=0),
    "not in enum": lambda c: c["trainer"].update(precision="fp8"),
    "scheduler option of another": lambda c: c["scheduler"].update(gamma=0.5),
    "missing section": lambda c: c.pop("optimizer"),
}


@pytest.mark.parametrize("change", MISTAKES.values(), ids=MISTAKES.keys())
def test_mistakes_fail_the_schema_and_trainkit_validate(schema, cli, tmp_path, change):
    config = _broken(change)
    assert _errors(schema, config), "the schema accepted a broken config"
    # the schema and `trainkit validate` agree: both refuse it
    code, _, err = cli("validate", write_config(tmp_path / "bad.yaml", config))
    assert code == 2 and "error:" in err


def _leaf_errors(errors) -> list:
    leaves = []
    for error in errors:
        leaves += _leaf_errors(error.context) if error.context else [error]
    return leaves


def test_the_matching_branch_names_the_bad_option(schema):
    # `name` picks the branch (as editors do); that branch says exactly what is wrong
    config = _broken(lambda c: c["optimizer"].update(lr="fast"))
    branches = [b["properties"]["name"]["const"] for b in schema["properties"]["optimizer"]["oneOf"]]
    adam_branch = ["properties", "optimizer", "oneOf", branches.index("adam")]
    leaves = _leaf_errors(jsonschema.Draft202012Validator(schema).iter_errors(config))
    adam = [e for e in leaves if list(e.absolute_schema_path)[:4] == adam_branch]
    assert [(list(e.absolute_path), e.message) for e in adam] == [
        (["optimizer", "lr"], "'fast' is not of type 'number'")
    ]


def test_each_registered_builder_is_a_branch_with_its_options(schema):
    from trainkit.registry import REGISTRIES

    for section, registry in REGISTRIES.items():
        node = schema["properties"][section]
        node = node["anyOf"][0] if "anyOf" in node else node
        # one branch per registered name; model families (torchvision.*) are one branch each
        named = [b for b in node["oneOf"] if "const" in b["properties"]["name"]]
        branches = {b["properties"]["name"]["const"]: b for b in named}
        assert sorted(branches) == registry.names(), section
        assert len(node["oneOf"]) - len(named) == len(registry.families()), section
        for name, branch in branches.items():
            assert set(registry.options(name)) <= set(branch["properties"]), f"{section} {name}"
            assert branch["additionalProperties"] is False
    # data branches carry trainkit's own keys beside the data set's options
    mnist = next(b for b in schema["properties"]["data"]["oneOf"] if b["properties"]["name"]["const"] == "mnist")
    assert {"root", "download", "batch_size", "eval_batch_size", "augment"} <= set(mnist["properties"])
    assert mnist["properties"]["batch_size"]["exclusiveMinimum"] == 0
    sgd = next(b for b in schema["properties"]["optimizer"]["oneOf"] if b["properties"]["name"]["const"] == "sgd")
    assert "lr" in sgd["required"]  # sgd has no default learning rate


def test_optional_parts_may_be_left_out(schema, tmp_path):
    config = tiny_config(tmp_path)
    del config["name"]  # defaults to the file's stem
    config["scheduler"] = None
    assert _errors(schema, config) == []
    assert _errors(schema, {"model": {"name": "mlp"}, "data": {"name": "mnist"}, "optimizer": {"name": "adam"}}) == []


@pytest.mark.usefixtures("demo_plugin_on_path")
def test_schema_with_import_includes_plugin_components(cli):
    code, out, err = cli("schema", "--import", PLUGIN)
    assert code == 0, err
    models = [b["properties"]["name"].get("const") for b in json.loads(out)["properties"]["model"]["oneOf"]]
    assert "demo_linear" in models


@pytest.mark.usefixtures("isolated_registries")
def test_schema_with_missing_import_exits_2(cli):
    code, out, err = cli("schema", "--import", "no_such_plugin_module")
    assert code == 2 and out == ""
    assert "cannot import module 'no_such_plugin_module'" in err


def test_building_the_schema_twice_gives_the_same_result():
    # config_schema() must not modify pydantic's cached schemas in place
    from trainkit.config.jsonschema import config_schema

    first = copy.deepcopy(config_schema())
    assert config_schema() == first
