"""What users bring from Hydra, the Lightning CLI and other CLIs works, or is answered in their terms."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

import trainkit
from conftest import subprocess_env, tiny_config, write_config
from helpers_ecosystem import regression_config
from trainkit.errors import ConfigError


@pytest.fixture
def config_file(tmp_path):
    return write_config(tmp_path / "tiny.yaml", tiny_config(tmp_path))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("conventions")
    return trainkit.train(tiny_config(base, trainer={"epochs": 1}), quiet=True)["run_dir"]


# ------------------------------------------------------------------ overrides


def test_hydra_plus_sets_a_key_the_schema_has(cli, config_file):
    code, out, err = cli("validate", config_file, "+trainer.grad_clip=1.5", "++model.dropout=0.1")
    assert code == 0, err
    resolved = yaml.safe_load(out)
    assert resolved["trainer"]["grad_clip"] == 1.5 and resolved["model"]["dropout"] == 0.1


def test_hydra_plus_on_an_unknown_key_says_what_plus_means_here(cli, config_file):
    code, _, err = cli("validate", config_file, "+trainer.gradclip=1")
    assert code == 2
    assert err == (
        f"error: {config_file}: override '+trainer.gradclip=1': trainer.gradclip: unknown key; did you mean "
        "'grad_clip'? ('+' adds a key in Hydra; trainkit's keys are fixed by its schema, so '+key=value' sets "
        "a key it has)\n"
    )


def test_a_broken_yaml_value_is_called_a_yaml_syntax_error(cli, config_file):
    code, _, err = cli("validate", config_file, "model.channels=[16,32")
    assert code == 2
    assert err == (
        "error: malformed override 'model.channels=[16,32': YAML syntax error in the value at column 7: "
        "expected ',' or ']', but got '<stream end>'\n"
    )


def test_a_data_key_typo_is_matched_against_the_sections_keys_and_the_builders_options(cli, config_file):
    code, _, err = cli("validate", config_file, "data.batchsize=32")
    assert code == 2
    assert err == (
        f"error: {config_file}: override 'data.batchsize=32': data.batchsize: dataset 'synthetic_images' has no "
        "option 'batchsize'; did you mean 'batch_size'? (data keys: num_classes, channels, size, "
        "n_train, n_test, noise, data_seed, batch_size, eval_batch_size, num_workers, augment)\n"
    )
    code, _, err = cli("validate", config_file, "data.eval_batchsize=32")
    assert "did you mean 'eval_batch_size'?" in err


def test_validate_prints_block_yaml(cli, config_file):
    code, out, _ = cli("validate", config_file, "trainer.early_stopping={metric: val_loss}")
    assert code == 0
    assert "{" not in out  # sections are indented blocks, one key per line
    assert "  channels: [4, 8]\n" in out  # a short list stays on its line
    assert "  early_stopping:\n    metric: val_loss\n    mode: min\n" in out
    assert max(len(line) for line in out.splitlines()) < 100
    assert (
        yaml.safe_load(out)
        == trainkit.load_config(config_file, ["trainer.early_stopping={metric: val_loss}"]).to_dict()
    )


# ------------------------------------------------------------------ flags


@pytest.mark.parametrize("command", ["train", "resume", "eval"])
def test_a_bad_device_names_the_flag_the_user_typed(cli, config_file, trained_run, command):
    target = config_file if command == "train" else trained_run
    code, _, err = cli(command, target, "--device", "gpu")
    assert code == 2
    assert err == "error: --device gpu: should be one of auto, cpu, cuda, cuda:N, mps\n"


def test_the_api_names_its_device_argument(tmp_path):
    with pytest.raises(ConfigError) as exc:
        trainkit.train(tiny_config(tmp_path), device="gpu", quiet=True)
    assert str(exc.value) == (
        "config: device='gpu': trainer.device: should be one of auto, cpu, cuda, cuda:N, mps, got 'gpu'"
    )


def test_eval_predict_and_export_take_the_checkpoint_as_an_argument(cli, trained_run, tmp_path):
    code, out, err = cli("eval", trained_run, "--json")
    assert code == 0, err
    by_flag = cli("eval", "--ckpt", trained_run, "--json")[1]
    assert json.loads(out) == json.loads(by_flag)
    code, out, err = cli("eval", trained_run, "trainer.limit_eval_batches=1", "--json")  # then overrides
    assert code == 0 and json.loads(out)["samples"] == 20, err
    code, out, err = cli("export", trained_run, "-o", tmp_path / "m.pt2")
    assert code == 0 and out.startswith(f"wrote {tmp_path / 'm.pt2'}"), err
    from PIL import Image

    Image.new("L", (8, 8), 40).save(tmp_path / "a.png")
    code, out, err = cli("predict", trained_run, tmp_path / "a.png", "-k", "1")
    assert code == 0 and out.startswith(f"{tmp_path / 'a.png'}: class_"), err


@pytest.mark.parametrize(
    "args, message",
    [
        (["eval"], "error: give the checkpoint file or run folder: trainkit eval PATH [KEY=VALUE...] (or --ckpt PATH)"),
        (
            ["eval", "data.root=x"],
            "error: the checkpoint comes first, before data.root=x: trainkit eval PATH [KEY=VALUE...] (or --ckpt PATH)",
        ),
        (["export", "-o", "m.pt2"], "error: give the checkpoint file or run folder: trainkit export PATH -o FILE"),
        (["predict", "run"], "error: give at least one image file after the checkpoint: trainkit predict run IMAGE..."),
    ],
)
def test_a_missing_checkpoint_argument_is_one_line(cli, args, message):
    code, out, err = cli(*args)
    assert code == 2 and out == ""
    assert err.startswith(message)


def test_runs_without_a_checkpoints_folder_says_there_are_none_yet(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = cli("runs")
    assert code == 0 and out == ""
    assert err == "no runs yet: there is no checkpoints/ folder here (trainkit train writes runs there)\n"
    code, out, _ = cli("runs", "--json")
    assert code == 0 and json.loads(out) == []
    code, _, err = cli("runs", tmp_path / "typo")  # a folder named by the user is still checked
    assert code == 2 and "no such folder" in err


def test_help_has_a_full_sentence_per_command_and_readable_arguments():
    code = (
        "import sys\nfrom trainkit.cli import app\n"
        "for args in (['--help'], ['train', '--help'], ['eval', '--help'], ['predict', '--help']):\n"
        "    try:\n        app(args, prog_name='trainkit')\n"
        "    except SystemExit as exc:\n        assert exc.code == 0\n"
        "    print('=====')\n"
        "assert 'torch' not in sys.modules\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**subprocess_env(), "COLUMNS": "100"},
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    top, train, eval_, predict = run.stdout.split("=====\n")[:4]
    commands = top.split("Commands:\n")[1].splitlines()
    assert len(commands) >= 10
    for line in commands:
        assert line.rstrip().endswith(".") and not line.rstrip().endswith("..."), line
    assert "Usage: trainkit train [OPTIONS] CONFIG [KEY=VALUE...]" in train
    assert "Usage: trainkit eval [OPTIONS] [PATH] [KEY=VALUE...]" in eval_
    assert "Usage: trainkit predict [OPTIONS] [PATH] IMAGE..." in predict
    for text in (train, eval_, predict):
        assert "<" not in text.replace("<checkpoint.dir>/<name>/", "") and "{" not in text  # no Python types


def test_dir_of_the_package_lists_the_public_api():
    names = dir(trainkit)
    for name in ("train", "resume", "evaluate", "load_config", "MODELS", "DataBundle", "TrainkitError"):
        assert name in names


def test_a_regression_summary_shows_each_metric_once(tmp_path, capsys):
    from trainkit.training.progress import Reporter, shown_metrics

    result = trainkit.train(regression_config(tmp_path), quiet=True)
    assert shown_metrics(result["history"]) == ["train_loss", "val_loss", "val_mae", "val_r2"]
    Reporter().record(result["history"][0], 2)
    line = capsys.readouterr().err
    assert "val_loss" in line and "val_mse" not in line and line.count("\n") == 1
