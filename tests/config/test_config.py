"""Config errors: each kind of mistake gets its exact message, exit code 2, and nothing is written."""

from __future__ import annotations

import pytest
import yaml

from conftest import tiny_config, write_config
from trainkit.config import apply_overrides, load_config, parse_override, resolve
from trainkit.errors import ConfigError


def _validate(cli, tmp_path, config, *overrides):
    path = write_config(tmp_path / "cfg.yaml", config) if isinstance(config, dict) else config
    return cli("validate", path, *overrides)


def _train_writes_nothing(cli, tmp_path, path, *overrides):
    code, out, err = cli("train", path, *overrides)
    assert code == 2
    assert not (tmp_path / "ckpt").exists(), "a bad config must not create the run folder"
    return err


def test_valid_config_prints_resolved_result_with_defaults(cli, tmp_path):
    code, out, err = _validate(cli, tmp_path, tiny_config(tmp_path))
    assert code == 0, err
    resolved = yaml.safe_load(out)
    assert resolved["optimizer"] == {
        "name": "adam",
        "lr": 0.01,
        "betas": [0.9, 0.999],
        "eps": 1e-8,
        "weight_decay": 0.0,
        "amsgrad": False,
    }
    assert resolved["trainer"]["log_every"] == 2 and resolved["trainer"]["precision"] == "fp32"
    assert resolved["checkpoint"]["every_n_steps"] == 0
    assert "cfg.yaml: ok" in err


def test_missing_config_file(cli, tmp_path):
    code, out, err = cli("train", tmp_path / "nope.yaml")
    assert code == 2
    assert err == f"error: config file not found: {tmp_path / 'nope.yaml'}\n"


def test_yaml_syntax_error_names_the_line(cli, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nmodel: {name: cnn\noptimizer: {name: sgd}\n")
    err = _train_writes_nothing(cli, tmp_path, path)
    assert err.startswith(f"error: {path}: line 3, column 10: YAML syntax error:")


def test_empty_config(cli, tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing here\n")
    err = _train_writes_nothing(cli, tmp_path, path)
    assert err == f"error: {path}: the config is empty; it needs at least model, data and optimizer sections\n"


def test_top_level_must_be_a_mapping(cli, tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    err = _train_writes_nothing(cli, tmp_path, path)
    assert "the top level must be a mapping" in err


def test_python_tags_are_refused_and_never_run(cli, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    err = _train_writes_nothing(cli, tmp_path, path)
    assert "line 1:" in err and "python/object/apply:os.system" in err and "safe_load" in err
    assert not marker.exists()


def test_unknown_key_with_did_you_mean_and_line(cli, tmp_path):
    config = tiny_config(tmp_path)
    config["trainer"]["epoch"] = 3
    code, _, err = _validate(cli, tmp_path, config)
    assert code == 2
    line = (tmp_path / "cfg.yaml").read_text().splitlines().index("  epoch: 3") + 1
    assert err == f"error: {tmp_path / 'cfg.yaml'}: line {line}: trainer.epoch: unknown key; did you mean 'epochs'?\n"


def test_unknown_top_level_key(cli, tmp_path):
    config = tiny_config(tmp_path, optimiser={"name": "sgd"})
    code, _, err = _validate(cli, tmp_path, config)
    assert code == 2 and "optimiser: unknown key; did you mean 'optimizer'?" in err


def test_wrong_type(cli, tmp_path):
    config = tiny_config(tmp_path, trainer={"epochs": "many"})
    code, _, err = _validate(cli, tmp_path, config)
    assert code == 2
    assert "trainer.epochs: should be a valid integer, got 'many'" in err


@pytest.mark.parametrize(
    "section,key,value,message",
    [
        ("data", "batch_size", 0, "data.batch_size: should be greater than 0, got 0"),
        ("data", "batch_size", -8, "data.batch_size: should be greater than 0, got -8"),
        ("trainer", "epochs", 0, "trainer.epochs: should be greater than 0, got 0"),
        ("optimizer", "lr", 0, "optimizer.lr: should be greater than 0, got 0"),
        ("optimizer", "lr", -0.1, "optimizer.lr: should be greater than 0, got -0.1"),
    ],
)
def test_non_positive_numbers(cli, tmp_path, section, key, value, message):
    config = tiny_config(tmp_path, **{section: {key: value}})
    code, _, err = _validate(cli, tmp_path, config)
    assert code == 2 and message in err, err


@pytest.mark.parametrize(
    "section,name,message",
    [
        (
            "model",
            "cnnn",
            "model.name: unknown model 'cnnn'; did you mean 'cnn'? (known: cnn, fast_cnn, linear_regression, mlp)",
        ),
        ("data", "mnsit", "data.name: unknown dataset 'mnsit'; did you mean 'mnist'?"),
        ("optimizer", "adamw2", "optimizer.name: unknown optimizer 'adamw2'; did you mean 'adamw'?"),
        ("scheduler", "cosin", "scheduler.name: unknown scheduler 'cosin'; did you mean 'cosine'?"),
        (
            "optimizer",
            "lbfgs",
            "optimizer.name: unknown optimizer 'lbfgs' (known: adadelta, adam, adamw, rmsprop, sgd)",
        ),
    ],
)
def test_unknown_component_names(cli, tmp_path, section, name, message):
    config = tiny_config(tmp_path, **{section: {"name": name}})
    code, _, err = _validate(cli, tmp_path, config)
    assert code == 2 and message in err, err


def test_builder_keyword_that_does_not_exist(cli, tmp_path):
    config = tiny_config(tmp_path, optimizer={"momentun": 0.9})
    code, _, err = _validate(cli, tmp_path, config)
    assert code == 2
    assert (
        "optimizer.momentun: optimizer 'adam' has no option 'momentun' "
        "(optimizer keys: lr, betas, eps, weight_decay, amsgrad, param_groups, no_decay_norm_and_bias)"
    ) in err


def test_builder_option_of_wrong_type(cli, tmp_path):
    config = tiny_config(tmp_path, model={"hidden": "wide"})
    code, _, err = _validate(cli, tmp_path, config)
    assert code == 2 and "model.hidden: should be a valid integer" in err


def test_runtime_inputs_cannot_be_set_in_yaml(cli, tmp_path):
    config = tiny_config(tmp_path, model={"num_classes": 3})
    code, _, err = _validate(cli, tmp_path, config)
    assert code == 2
    assert "model.num_classes: is supplied by trainkit when the model is built; remove it" in err


def test_every_problem_is_reported_at_once(cli, tmp_path):
    config = tiny_config(
        tmp_path, model={"name": "cnnn"}, optimizer={"lr": -1}, trainer={"epoch": 3}, data={"batch_size": 0}
    )
    code, _, err = _validate(cli, tmp_path, config, "checkpoint.evry_n_steps=3")
    assert code == 2
    assert "5 problems in the config:" in err
    for fragment in (
        "model.name: unknown model 'cnnn'",
        "optimizer.lr: should be greater than 0",
        "trainer.epoch: unknown key",
        "data.batch_size: should be greater than 0",
        "override 'checkpoint.evry_n_steps=3': checkpoint.evry_n_steps: unknown key; did you mean 'every_n_steps'?",
    ):
        assert fragment in err, fragment
    assert len(err.strip().splitlines()) == 6  # the header and one line per problem


def test_override_sets_values_parsed_as_yaml(tmp_path):
    path = write_config(tmp_path / "cfg.yaml", tiny_config(tmp_path))
    cfg = load_config(
        path,
        [
            "optimizer.lr=0.1",
            "trainer.epochs=7",
            "model.channels=[2, 3]",
            "trainer.grad_clip=null",
            "scheduler.name=cosine",
        ],
    )
    assert cfg.optimizer.options()["lr"] == 0.1 and cfg.trainer.epochs == 7
    assert cfg.model.options()["channels"] == [2, 3]
    assert cfg.scheduler.name == "cosine"


def test_override_of_key_that_does_not_exist(cli, tmp_path):
    code, _, err = _validate(cli, tmp_path, tiny_config(tmp_path), "trainer.epoch=3")
    assert code == 2
    assert err.strip().endswith("override 'trainer.epoch=3': trainer.epoch: unknown key; did you mean 'epochs'?")


def test_malformed_override(cli, tmp_path):
    path = write_config(tmp_path / "cfg.yaml", tiny_config(tmp_path))
    err = _train_writes_nothing(cli, tmp_path, path, "lr0.1")
    assert (
        err == "error: malformed override 'lr0.1': expected key=value, e.g. optimizer.lr=0.1 (or ~key to remove one)\n"
    )


@pytest.mark.parametrize("text", ["=1", "a..b=1", "a b=2", "x=[1,"])
def test_other_malformed_overrides(text):
    with pytest.raises(ConfigError, match="malformed override"):
        parse_override(text)


def test_override_through_a_value_is_an_error():
    with pytest.raises(ConfigError, match="trainer.epochs is a value, not a section"):
        apply_overrides({"trainer": {"epochs": 1}}, ["trainer.epochs.x=1"])


def test_name_defaults_to_the_file_stem(tmp_path):
    config = tiny_config(tmp_path)
    del config["name"]
    cfg = load_config(write_config(tmp_path / "my_exp.yaml", config))
    assert cfg.name == "my_exp"


def test_bad_run_name(tmp_path):
    with pytest.raises(
        ConfigError, match=r"name: should be a folder name \(letters, digits, '.', '_', '-'\), got '../escape'"
    ):
        resolve(tiny_config(tmp_path, name="../escape"))


def test_device_value_is_checked(tmp_path):
    with pytest.raises(ConfigError, match="trainer.device: should be one of auto, cpu, cuda, cuda:N, mps, got 'gpu'"):
        resolve(tiny_config(tmp_path, trainer={"device": "gpu"}))


def test_tensorboard_without_the_package_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setattr("trainkit.plugins.has_module", lambda name: False)
    with pytest.raises(
        ConfigError,
        match=r"logging.tensorboard: needs the tensorboard package: "
        r"pip install 'trainkit\[tensorboard\]'",
    ):
        resolve(tiny_config(tmp_path, logging={"tensorboard": True}))


def test_device_cuda_without_cuda_is_a_usage_error(cli, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    path = write_config(tmp_path / "cfg.yaml", tiny_config(tmp_path))
    code, _, err = cli("train", path, "--device", "cuda", "--quiet")
    assert code == 2
    assert "trainer.device: 'cuda' was asked for, but this machine has no CUDA device" in err
    assert not (tmp_path / "ckpt").exists()


def test_exponent_floats_read_as_numbers_like_yaml_1_2(tmp_path):
    path = tmp_path / "exp.yaml"
    config = tiny_config(tmp_path)
    text = write_config(path, config).read_text().replace("lr: 0.01", "lr: 1e-2")
    path.write_text(text.replace("seed: 0", "seed: 1_000"))
    cfg = load_config(path, ["trainer.grad_clip=5e-1"])
    assert cfg.optimizer.options()["lr"] == 0.01 and cfg.trainer.grad_clip == 0.5 and cfg.seed == 1000


def test_a_key_given_twice_is_an_error(cli, tmp_path):
    path = tmp_path / "twice.yaml"
    text = write_config(path, tiny_config(tmp_path)).read_text()
    path.write_text(text + "seed: 3\n")
    first = text.splitlines().index("seed: 0") + 1
    last = len(text.splitlines()) + 1
    code, _, err = cli("validate", path)
    assert code == 2
    assert err == f"error: {path}: line {last}: seed: key given twice (first on line {first})\n"


def test_tilde_override_removes_a_key_to_switch_components(tmp_path):
    config = tiny_config(tmp_path, optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True})
    path = write_config(tmp_path / "sgd.yaml", config)
    cfg = load_config(path, ["optimizer.name=adamw", "~optimizer.momentum", "~optimizer.nesterov"])
    assert cfg.optimizer.name == "adamw" and "momentum" not in cfg.optimizer.options()
    with pytest.raises(ConfigError, match=r"override '~optimizer.betas': optimizer.betas is not set"):
        load_config(path, ["~optimizer.betas"])
    with pytest.raises(ConfigError, match="malformed override '~'"):
        load_config(path, ["~"])
