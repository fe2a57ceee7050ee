"""The README's examples run as written: the set-up commands, the error example, the plugin and the API."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, subprocess_env

README = (REPO / "README.md").read_text()


def _blocks_after(heading: str) -> list[tuple[str, str]]:
    """(language, code) of the fenced blocks in the section that starts with `heading`."""
    start = README.index(heading)
    end = README.find("\n## ", start + len(heading))
    section = README[start : end if end > 0 else None]
    return re.findall(r"```(\w*)\n(.*?)```", section, flags=re.S)


def test_setup_commands_are_the_ones_ci_runs():
    ((_, commands),) = _blocks_after("## Set-up: two commands")
    lines = [line for line in commands.splitlines() if line and not line.startswith("#")]
    assert len(lines) == 2
    main_job, tests = lines
    assert main_job.startswith("python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/trainkit train ")
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert tests in ci, "CI must run exactly the README's test command"
    config = main_job.split("trainkit train ")[1].split()[0]
    assert (REPO / config).is_file()


def test_the_config_error_example_prints_what_the_readme_shows(tmp_path):
    blocks = _blocks_after("**Exit codes**")
    (_, bad_yaml), (_, session) = blocks[0], blocks[1]
    (tmp_path / "bad.yaml").write_text(bad_yaml)
    command = session.splitlines()[0].removeprefix("$ ").split()
    expected = "\n".join(session.splitlines()[1:-2]) + "\n"
    result = subprocess.run(
        [sys.executable, "-m", "trainkit", *command[1:]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=subprocess_env(),
    )
    assert result.returncode == int(session.splitlines()[-1])
    assert result.stderr == expected


@pytest.mark.usefixtures("isolated_registries")
def test_the_plugin_example_registers_and_trains(tmp_path, cli, monkeypatch):
    (_, module), (_, yaml_lines) = _blocks_after("## Your own components")[:2]
    (tmp_path / "my_models.py").write_text(module)
    config = yaml_lines + (
        "name: readme_plugin\n"
        "data: {name: synthetic_images, n_train: 64, n_test: 32, size: 8, batch_size: 16}\n"
        "optimizer: {name: adam}\n"
        f"trainer: {{epochs: 1, device: cpu}}\n"
        f"checkpoint: {{dir: {tmp_path / 'ckpt'}}}\n"
    )
    (tmp_path / "plugin.yaml").write_text(config)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_models", raising=False)  # imported afresh, forgotten after
    code, out, err = cli("train", "plugin.yaml", "-q")
    assert code == 0, err
    code, _, err = cli("validate", "plugin.yaml", "model.hidden=wide")
    assert code == 2 and "model.hidden: should be a valid integer" in err


def test_the_python_api_example_runs(tmp_path, monkeypatch):
    ((_, code),) = [b for b in _blocks_after("## Python API") if b[0] == "python"]
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # our own README, tested as written
    assert namespace["metrics"]["split"] == "test" and namespace["metrics"]["mse"] < 1.0
    assert (tmp_path / "checkpoints" / "linear_regression" / "best.pt").exists()


def _config_keys() -> list[str]:
    """Every key of the config schema, dotted (trainer.epochs, data.augment.hflip, ...).

    Sections that are always there (trainer, data.augment) list their keys; optional ones
    (scheduler, early_stopping, random_resized_crop) are one row each."""
    from pydantic import BaseModel

    from trainkit.config import ExperimentConfig
    from trainkit.config._sections import DataConfig

    def walk(model: type[BaseModel], prefix: str) -> list[str]:
        keys = []
        for name, field in model.model_fields.items():
            args = getattr(field.annotation, "__args__", ())
            optional = type(None) in args
            nested = [a for a in (field.annotation, *args) if isinstance(a, type) and issubclass(a, BaseModel)]
            if name in ("model", "data", "optimizer"):
                continue  # component sections: their own keys are listed below
            if nested and not optional:
                keys += walk(nested[0], f"{prefix}{name}.")
            else:
                keys.append(prefix + name)
        return keys

    from trainkit.config import ModelConfig, OptimizerConfig

    return (
        walk(ExperimentConfig, "")
        + walk(DataConfig, "data.")
        + ["model.name", "optimizer.name"]
        + [f"model.{k}" for k in ModelConfig.model_fields if k != "name"]
        + [f"optimizer.{k}" for k in OptimizerConfig.model_fields if k != "name"]
    )


@pytest.mark.parametrize("key", _config_keys())
def test_every_config_key_is_documented(key):
    assert f"| `{key}` |" in README, f"README's config table lacks {key}"
