"""A checkpoint names plugin modules; they are imported only with the user's leave.

The scenario: someone hands over a zip of "checkpoint + files"; unpacked, the working
folder holds the checkpoint and `evil_mod.py`, and the checkpoint names `evil_mod` (in its
`plugins` list, or in its config's `imports`). Importing it would run its code.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import trainkit
from conftest import TRAINKIT, load_ckpt, subprocess_env, tiny_config, write_config
from helpers_ecosystem import write_entry_point_dist
from trainkit.errors import PluginError, UntrustedPluginError

EVIL = """
import os, sys
with open({marker!r}, "w") as f:
    cwd = os.getcwd()
    f.write("at the end" if sys.path and sys.path[-1] == cwd else "elsewhere")
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("trust")
    trainkit.train(tiny_config(tmp, trainer={"epochs": 1}, data={"channels": 1}), quiet=True)
    return tmp / "ckpt" / "tiny" / "last.pt"


@pytest.fixture
def planted(trained, tmp_path, monkeypatch):
    """A working folder with a checkpoint naming `evil_mod`, and evil_mod.py beside it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    for name in ("evil_mod", "evil_cfg"):
        (tmp_path / f"{name}.py").write_text(EVIL.format(marker=str(tmp_path / f"{name}.ran")))
        monkeypatch.delitem(sys.modules, name, raising=False)
    checkpoint = load_ckpt(trained)
    checkpoint["plugins"] = ["evil_mod"]
    torch.save(checkpoint, tmp_path / "planted.pt")
    checkpoint["plugins"] = []
    checkpoint["config"]["imports"] = ["evil_cfg"]  # the same, through the saved config
    torch.save(checkpoint, tmp_path / "planted_cfg.pt")
    image = tmp_path / "digit.png"
    from PIL import Image

    Image.new("L", (8, 8), 255).save(image)
    return tmp_path


def _args(command: str, ckpt: Path, folder: Path) -> list:
    return {
        "eval": ["eval", "--ckpt", ckpt],
        "resume": ["resume", ckpt, "trainer.epochs=2", "-q"],
        "predict": ["predict", "--ckpt", ckpt, folder / "digit.png"],
        "export": ["export", "--ckpt", ckpt, "-o", folder / "model.pt2"],
    }[command]


def _refusal(ckpt: Path, module: str) -> str:
    return (
        f"error: checkpoint {ckpt} names plugin module '{module}', and importing a module runs its code: "
        "trainkit imports it only if you install it as a 'trainkit.plugins' entry point, name it "
        f"(--import {module}; Python: imports=[...]) or trust the checkpoint (--trust-checkpoint-plugins; "
        "Python: trust_plugins=True)\n"
    )


COMMANDS = ["eval", "resume", "predict", "export"]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("ckpt,module", [("planted.pt", "evil_mod"), ("planted_cfg.pt", "evil_cfg")])
def test_a_module_a_checkpoint_names_is_not_imported_without_leave(cli, planted, command, ckpt, module):
    path = planted / ckpt
    before = sorted(p.name for p in planted.iterdir())
    code, out, err = cli(*_args(command, path, planted))
    assert (code, out, err) == (2, "", _refusal(path, module))
    assert not (planted / f"{module}.ran").exists() and module not in sys.modules
    assert str(planted) not in sys.path
    assert sorted(p.name for p in planted.iterdir()) == before  # nothing written either


@pytest.mark.parametrize("command", COMMANDS)
def test_import_names_the_module_and_the_working_folder_goes_at_the_end(cli, planted, command):
    code, out, err = cli(*_args(command, planted / "planted.pt", planted), "--import", "evil_mod")
    assert code == 0, err
    assert (planted / "evil_mod.ran").read_text() == "at the end"


def test_trusting_the_checkpoint_imports_from_the_path_but_not_from_the_working_folder(cli, planted, monkeypatch):
    path = planted / "planted.pt"
    code, out, err = cli("eval", "--ckpt", path, "--trust-checkpoint-plugins")
    assert code == 2
    assert err.startswith(f"error: checkpoint {path} needs plugin module 'evil_mod' (ModuleNotFoundError")
    assert not (planted / "evil_mod.ran").exists()
    site = planted / "site"
    site.mkdir()
    (planted / "evil_mod.py").rename(site / "evil_mod.py")
    monkeypatch.syspath_prepend(str(site))
    code, out, err = cli("eval", "--ckpt", path, "--trust-checkpoint-plugins")
    assert code == 0, err
    assert (planted / "evil_mod.ran").exists()


@pytest.mark.usefixtures("isolated_registries")
def test_an_installed_entry_point_is_allowed(cli, planted, monkeypatch):
    site = planted / "site"
    site.mkdir()
    (planted / "evil_mod.py").rename(site / "evil_mod.py")
    monkeypatch.syspath_prepend(str(write_entry_point_dist(site, value="evil_mod")))
    from trainkit import plugins
    from trainkit.registry import REGISTRIES

    monkeypatch.setattr(plugins, "_entry_points_loaded", False)
    for registry in REGISTRIES.values():
        monkeypatch.setattr(registry, "_loaded", False)
    code, out, err = cli("eval", "--ckpt", planted / "planted.pt")
    assert code == 0, err


def test_the_python_api_asks_for_the_same_leave(planted):
    path = planted / "planted.pt"
    with pytest.raises(UntrustedPluginError) as refused:
        trainkit.evaluate(path)
    assert f"error: {refused.value}\n" == _refusal(path, "evil_mod")
    assert refused.value.exit_code == 2 and not (planted / "evil_mod.ran").exists()
    with pytest.raises(PluginError, match="needs plugin module 'evil_mod'"):
        trainkit.evaluate(path, trust_plugins=True)  # not on the path: the working folder is not searched
    assert trainkit.evaluate(path, imports=["evil_mod"])["samples"] == 40
    assert (planted / "evil_mod.ran").exists()


def test_import_of_a_module_that_fails_is_one_line(cli, planted):
    (planted / "broken_mod.py").write_text("raise RuntimeError('no\\ngood')\n")
    code, out, err = cli("eval", "--ckpt", planted / "planted.pt", "--import", "broken_mod")
    assert code == 2
    assert err == "error: --import: cannot import module 'broken_mod': RuntimeError: no\\ngood\n"


@pytest.mark.slow
def test_python_m_trainkit_never_imports_from_the_working_folder_unasked(planted, trained):
    """`python -m` puts the working folder first on sys.path; trainkit takes it off, so a
    planted module named like a library (here yaml) is not imported in its place."""
    (planted / "yaml.py").write_text(EVIL.format(marker=str(planted / "yaml.ran")))
    config = write_config(planted / "c.yaml", tiny_config(planted))
    env = subprocess_env()
    for args in (["validate", str(config)], ["eval", "--ckpt", str(planted / "planted.pt")]):
        run = subprocess.run([*TRAINKIT, *args], cwd=planted, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode in (0, 2), run.stderr
        assert not (planted / "yaml.ran").exists() and not (planted / "evil_mod.ran").exists()
    assert run.returncode == 2 and run.stderr == _refusal(planted / "planted.pt", "evil_mod")


@pytest.mark.usefixtures("isolated_registries")
def test_import_lists_validates_and_trains_with_a_plugin_the_config_does_not_name(cli, tmp_path, monkeypatch):
    from helpers_ecosystem import PLUGIN, PLUGIN_PKG, plugin_config

    monkeypatch.chdir(PLUGIN_PKG)  # the plugin sits in the working folder: --import finds it there
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(PLUGIN_PKG))])
    config = write_config(tmp_path / "p.yaml", plugin_config(tmp_path, imports=False))
    code, out, err = cli("ls", "models")
    assert code == 0 and "demo_linear" not in out
    assert cli("validate", config)[0] == 2  # nothing imported it yet
    code, out, err = cli("ls", "models", "--import", PLUGIN)
    assert code == 0, err
    assert "demo_linear" in out and "Flatten, then one linear layer (plugin demo)." in out
    assert cli("validate", config, "--import", PLUGIN)[0] == 0
    code, out, err = cli("train", config, "--import", PLUGIN, "-q")
    assert code == 0, err
    assert load_ckpt(tmp_path / "ckpt" / "plugged" / "last.pt")["plugins"] == [PLUGIN]
    code, out, err = cli("ls", "--import", "no_such_module_at_all")
    assert (code, err) == (
        2,
        "error: --import: cannot import module 'no_such_module_at_all': ModuleNotFoundError: "
        "No module named 'no_such_module_at_all'\n",
    )
