"""Configs someone else wrote: YAML bombs, deep nesting, huge numbers, lax types, seeds."""

from __future__ import annotations

import math

import pytest
import yaml

from conftest import tiny_config, write_config
from trainkit.config import _yaml, resolve
from trainkit.errors import ConfigError


def _validate(cli, tmp_path, text: str, *overrides: str):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    code, out, err = cli("validate", path, *overrides)
    return code, out, err, path


def _base(tmp_path) -> str:
    return yaml.safe_dump(tiny_config(tmp_path), sort_keys=False)


def test_a_billion_laughs_is_refused_at_the_line_that_expands_it(cli, tmp_path):
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    code, out, err, path = _validate(cli, tmp_path, _base(tmp_path) + "\n".join(lines) + "\n")
    first = _base(tmp_path).count("\n")
    assert (code, out) == (2, "")
    assert err == (
        f"error: {path}: line {first + 5}: the document expands to more than {_yaml.MAX_VALUES} values "
        "(aliases repeat what they name: a YAML alias bomb?); a config is far smaller\n"
    )


def test_an_alias_inside_what_it_names_is_refused(cli, tmp_path):
    code, out, err, path = _validate(cli, tmp_path, _base(tmp_path) + "loop: &l [1, [2, *l]]\n")
    line = _base(tmp_path).count("\n") + 1
    assert (code, err) == (2, f"error: {path}: line {line}: alias '*l' is inside the collection it names (a loop)\n")


@pytest.mark.parametrize(
    "text,message",
    [
        ("x: " + "[" * 100 + "]" * 100 + "\n", "line 1: nested more than 64 levels deep; a config is far flatter"),
        (
            "big: [" + "0, " * 20_000 + "0]\n",
            "line 1: the document has more than 10000 values; a config is far smaller",
        ),
        ("seed: " + "9" * 5000 + "\n", "line 1: cannot read this value: Exceeds the limit (4300 digits)"),
        ("when: 2024-02-30\n", "line 1: cannot read this value: day is out of range for month"),
        ("a: b\x00\n", "YAML syntax error: character #x0000 at position 4 is not allowed in YAML"),
        ("? [a, b]\n: 1\n", "line 1: a key must be a name, not a list or a mapping"),
        ("a: &x 1\nb: &x 2\n", "line 2, column 4: YAML syntax error: found duplicate anchor 'x'"),
    ],
)
def test_odd_documents_are_one_line(cli, tmp_path, text, message):
    code, out, err, path = _validate(cli, tmp_path, text)
    assert (code, out) == (2, "")
    assert err.startswith(f"error: {path}: {message}") and err.count("\n") == 1, err


def test_aliases_that_expand_a_little_are_fine(cli, tmp_path):
    text = _base(tmp_path).replace("optimizer:\n", "defaults: &opt {name: adam, lr: 0.01}\noptimizer:\n", 1)
    config = tiny_config(tmp_path)
    config.pop("optimizer")
    text = yaml.safe_dump(config, sort_keys=False) + "shared: &opt {name: adam, lr: 0.01}\noptimizer: *opt\n"
    code, out, err, path = _validate(cli, tmp_path, text)
    assert code == 2 and "shared: unknown key" in err  # only the extra key: the alias itself is read
    text = yaml.safe_dump(config, sort_keys=False) + "optimizer: &opt {name: adam, lr: 0.01}\n"
    assert _validate(cli, tmp_path, text)[0] == 0


def test_a_config_larger_than_the_cap_is_refused_before_it_is_parsed(cli, tmp_path):
    text = _base(tmp_path) + "# " + "x" * _yaml.MAX_BYTES + "\n"
    code, out, err, path = _validate(cli, tmp_path, text)
    assert (code, err) == (2, f"error: cannot read config file {path}: is larger than 1024 KiB\n")


def test_a_byte_order_mark_is_no_error(cli, tmp_path):
    assert _validate(cli, tmp_path, "\ufeff" + _base(tmp_path))[0] == 0


# ---------------------------------------------------------------- seeds


@pytest.mark.parametrize(
    "seed,problem",
    [
        (2**80, "seed: should be less than or equal to 4294967295, got 1208925819614629174706176"),
        (-1, "seed: should be greater than or equal to 0, got -1"),
        (2**32, "seed: should be less than or equal to 4294967295, got 4294967296"),
        (True, "seed: should be a valid integer, got True"),
        (0.5, "seed: should be a valid integer, got 0.5"),
    ],
)
def test_seed_outside_what_python_numpy_and_torch_all_accept(cli, tmp_path, seed, problem):
    path = write_config(tmp_path / "c.yaml", tiny_config(tmp_path))
    code, out, err = cli("validate", path, f"seed={seed}")
    assert (code, out) == (2, "")
    assert err == f"error: {path}: override 'seed={seed}': {problem}\n"


def test_the_largest_seed_trains_with_derived_seeds_valid_too(tmp_path):
    """seed + rank + step and mix_seed(seed, epoch, ...) stay valid at the top of the range."""
    import numpy as np
    import torch

    import trainkit
    from trainkit.training import rng
    from trainkit.training.batches import epoch_permutation, mix_seed

    top = 2**32 - 1
    rng.seed_everything(top + 7 + 10**12)  # what a resume with another world size seeds
    assert 0 <= mix_seed(top, 10**9, 10**9, 7) < 2**63
    assert len(epoch_permutation(5, top, 3)) == 5
    result = trainkit.train(tiny_config(tmp_path, seed=top, trainer={"epochs": 1}), quiet=True)
    assert result["epochs"] == 1
    assert np.random.get_state()[0] == "MT19937" and torch.initial_seed() >= 0


# ---------------------------------------------------------------- strict types


@pytest.mark.parametrize(
    "override,problem",
    [
        ("trainer.epochs=true", "trainer.epochs: should be a valid integer, got True"),
        ("trainer.epochs=3.0", "trainer.epochs: should be a valid integer, got 3.0"),
        ("trainer.epochs='3'", "trainer.epochs: should be a valid integer, got '3'"),
        ("trainer.grad_clip=.inf", "trainer.grad_clip: should be a finite number, got inf"),
        ("trainer.compile=1", "trainer.compile: should be a valid boolean, got 1"),
        (
            "trainer.early_stopping={min_delta: .nan}",
            "trainer.early_stopping.min_delta: should be a finite number, got nan",
        ),
        ("optimizer.lr=.inf", "optimizer.lr: should be a finite number, got inf"),
        ("optimizer.lr=-.inf", "optimizer.lr: should be a finite number, got -inf"),
        ("optimizer.lr=true", "optimizer.lr: should be a valid number, got True"),
        ("model.hidden=true", "model.hidden: should be a valid integer, got True"),
        ("model.channels=[4, 8.5]", "model.channels.1: should be a valid integer, got 8.5"),
        ("data.download=yes please", "data.download: should be a valid boolean, got 'yes please'"),
        ("data.root=!!binary aGk=", "data.root: should be a valid string, got b'hi'"),
    ],
)
def test_numbers_are_numbers_and_floats_are_finite(cli, tmp_path, override, problem):
    config = tiny_config(tmp_path)
    config["data"] = {"name": "mnist", "root": "data"}  # a data set with a flag and a path
    path = write_config(tmp_path / "c.yaml", config)
    code, out, err = cli("validate", path, override)
    assert (code, out) == (2, "")
    assert err.startswith(f"error: {path}: ") and err.endswith(f"{problem}\n") and err.count("\n") == 1, err


def test_an_int_is_a_fine_float(tmp_path):
    cfg = resolve(tiny_config(tmp_path), ["optimizer.lr=1", "trainer.grad_clip=2"])
    assert cfg.optimizer.options()["lr"] == 1.0 and cfg.trainer.grad_clip == 2.0


@pytest.mark.usefixtures("isolated_registries")
def test_an_unannotated_option_is_checked_by_its_default(tmp_path):
    from trainkit.registry import OPTIMIZERS

    @OPTIMIZERS.register("loose_sgd")
    def loose_sgd(params, lr=0.1, nesterov=False, note=None):
        import torch

        return torch.optim.SGD(params, lr=lr, nesterov=nesterov)

    base = tiny_config(tmp_path, optimizer={"name": "loose_sgd"})
    base["optimizer"].pop("lr")
    assert resolve(base, ["optimizer.lr=1", "optimizer.note=[anything]"]).optimizer.options()["lr"] == 1
    for bad, problem in [
        ("optimizer.lr=true", "should be a valid integer"),
        ("optimizer.lr=.inf", "should be a finite number"),
        ("optimizer.nesterov=0", "should be a valid boolean"),
    ]:
        with pytest.raises(ConfigError, match=problem):
            resolve(base, [bad])
    assert math.isclose(resolve(base, ["optimizer.lr=0.5"]).optimizer.options()["lr"], 0.5)
