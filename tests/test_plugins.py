"""Plugins: components from outside trainkit, via a config's `imports:` or an installed
package's `trainkit.plugins` entry point; checkpoints name the modules they need."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import trainkit
from conftest import TRAINKIT, load_ckpt, subprocess_env, write_config
from helpers_ecosystem import PLUGIN, PLUGIN_PKG, forget_plugin, plugin_config, write_entry_point_dist
from trainkit import plugins
from trainkit.registry import REGISTRIES


def _fresh_entry_point_scan(monkeypatch) -> None:
    """Make the next registry lookup scan entry points again, as a new process would."""
    monkeypatch.setattr(plugins, "_entry_points_loaded", False)
    for registry in REGISTRIES.values():
        monkeypatch.setattr(registry, "_loaded", False)


def _env_without_plugin() -> dict[str, str]:
    env = subprocess_env()
    env["PYTHONPATH"] = str(Path(trainkit.__file__).parents[1])  # this trainkit, and nothing else
    return env


@pytest.mark.usefixtures("demo_plugin_on_path")
def test_imports_key_registers_and_checkpoint_records_the_module(cli, tmp_path):
    path = write_config(tmp_path / "plugged.yaml", plugin_config(tmp_path))
    code, out, err = cli("train", path, "--quiet")
    assert code == 0, err
    ckpt = load_ckpt(tmp_path / "ckpt" / "plugged" / "last.pt")
    assert ckpt["plugins"] == [PLUGIN]
    assert ckpt["config"]["model"] == {"name": "demo_linear", "scale": 1.0}  # the plugin's default, resolved
    code, out, err = cli("eval", "--ckpt", tmp_path / "ckpt" / "plugged" / "last.pt", "--json")
    assert code == 0, err


@pytest.mark.usefixtures("isolated_registries")
def test_without_imports_the_plugin_names_are_unknown(cli, tmp_path):
    path = write_config(tmp_path / "plugged.yaml", plugin_config(tmp_path, imports=False))
    code, out, err = cli("validate", path)
    assert code == 2
    assert "unknown model 'demo_linear'" in err and "unknown dataset 'demo_blobs'" in err


@pytest.mark.usefixtures("isolated_registries")
def test_unimportable_import_is_a_config_error(cli, tmp_path):
    config = plugin_config(tmp_path)
    config["imports"] = ["no_such_plugin_module"]
    code, out, err = cli("train", write_config(tmp_path / "bad.yaml", config))
    assert code == 2
    assert "imports.0: cannot import module 'no_such_plugin_module'" in err
    assert not (tmp_path / "ckpt").exists()


@pytest.mark.usefixtures("demo_plugin_on_path")
def test_entry_point_plugin_is_found_in_process(cli, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(write_entry_point_dist(tmp_path / "site")))
    _fresh_entry_point_scan(monkeypatch)
    code, out, err = cli("ls", "models")
    assert code == 0, err
    assert "demo_linear" in out and "Flatten, then one linear layer (plugin demo)." in out
    assert "demo_blobs" in cli("ls", "datasets")[1]


@pytest.mark.usefixtures("isolated_registries")
def test_broken_entry_point_warns_and_trainkit_still_works(cli, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(write_entry_point_dist(tmp_path / "site", value="no_such_module_xyz")))
    _fresh_entry_point_scan(monkeypatch)
    code, out, err = cli("ls", "models")
    assert code == 0
    assert "cnn" in out
    assert (
        "warning: plugin entry point 'demo' (no_such_module_xyz) failed to load: No module named "
        "'no_such_module_xyz'" in err
    )


def test_entry_point_plugin_trains_and_eval_without_it_exits_2(tmp_path):
    """End to end in fresh processes: an installed plugin (entry point, no `imports:`), then a
    machine without it."""
    site = write_entry_point_dist(tmp_path / "site")
    config = plugin_config(tmp_path, imports=False)
    path = write_config(tmp_path / "plugged.yaml", config)
    env = _env_without_plugin()
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(PLUGIN_PKG)])
    run = subprocess.run(
        [*TRAINKIT, "train", str(path), "--quiet"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    last = tmp_path / "ckpt" / "plugged" / "last.pt"
    assert load_ckpt(last)["plugins"] == [PLUGIN]

    run = subprocess.run(
        [*TRAINKIT, "eval", "--ckpt", str(last), "--trust-checkpoint-plugins"],
        cwd=tmp_path,
        env=_env_without_plugin(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.strip() == (
        f"error: checkpoint {last} needs plugin module '{PLUGIN}' (ModuleNotFoundError: No module named "
        f"'{PLUGIN}'); install the package that provides it, put it on PYTHONPATH, or name it with "
        "--import MODULE (which also looks in the working folder)"
    )


@pytest.mark.parametrize("command", ["eval", "resume", "predict", "export"])
@pytest.mark.usefixtures("demo_plugin_on_path")
def test_commands_from_a_checkpoint_name_the_missing_plugin(cli, tmp_path, monkeypatch, command):
    config = plugin_config(tmp_path)
    config["trainer"] = {**config["trainer"], "epochs": 1}
    write_config(tmp_path / "plugged.yaml", config)
    assert cli("train", tmp_path / "plugged.yaml", "--quiet")[0] == 0
    run_dir = tmp_path / "ckpt" / "plugged"

    forget_plugin()
    monkeypatch.setitem(sys.modules, PLUGIN, None)  # as if not installed: import fails
    args = {
        "eval": ["eval", "--ckpt", run_dir / "last.pt"],
        "resume": ["resume", run_dir, "trainer.epochs=2"],
        "predict": ["predict", "--ckpt", run_dir / "last.pt", tmp_path / "x.png"],
        "export": ["export", "--ckpt", run_dir / "last.pt", "-o", tmp_path / "m.pt2"],
    }[command]
    code, out, err = cli(*args, "--trust-checkpoint-plugins")
    assert code == 2 and out == ""
    assert f"needs plugin module '{PLUGIN}' (ModuleNotFoundError" in err
    assert err.count("\n") == 1


@pytest.mark.usefixtures("isolated_registries")
def test_entry_point_naming_a_function_is_called(cli, tmp_path, monkeypatch):
    module = tmp_path / "site" / "register_later.py"
    module.parent.mkdir(parents=True)
    module.write_text(
        "def register():\n"
        "    from trainkit.registry import OPTIMIZERS\n"
        "    @OPTIMIZERS.register('sgd_from_function')\n"
        "    def sgd_from_function(params, lr: float = 0.1):\n"
        "        '''SGD, registered by an entry-point function.'''\n"
        "        import torch\n"
        "        return torch.optim.SGD(params, lr=lr)\n"
    )
    monkeypatch.syspath_prepend(str(write_entry_point_dist(tmp_path / "site", value="register_later:register")))
    _fresh_entry_point_scan(monkeypatch)
    code, out, err = cli("ls", "optimizers")
    assert code == 0, err
    assert "sgd_from_function" in out
