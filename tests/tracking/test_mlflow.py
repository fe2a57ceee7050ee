"""MLflow tracking, read back through MLflow's own client (search_runs, get_metric_history) from
real SQLite stores that the tests create."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import trainkit
from conftest import (
    TRAINKIT,
    assert_same_tensors,
    load_ckpt,
    metric_history,
    subprocess_env,
    tiny_config,
    write_config,
)
from trainkit.errors import TrainingInterrupted
from trainkit.tracking import mlflow_sink
from trainkit.training.session import Session

mlflow = pytest.importorskip("mlflow")
from mlflow import MlflowClient  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite tracking store for the module (creating its tables takes seconds)."""
    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    here = os.getcwd()
    os.chdir(folder)  # the Default experiment's artifact folder is ./mlruns at creation
    try:
        MlflowClient(uri).search_experiments()  # creates the tables
    finally:
        os.chdir(here)
    return uri


@pytest.fixture(autouse=True)
def no_mlflow_environment(monkeypatch, tmp_path):
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "TRAINKIT_MLFLOW_PARENT_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    for name in mlflow_sink.HTTP_RETRIES:  # unset, and unset again after the test (trainkit sets them)
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # MLflow puts a new experiment's artifacts in ./mlruns


def _config(tmp_path, uri, experiment, name="m", log_checkpoints="best", **sections):
    config = tiny_config(tmp_path, name=name, **sections)
    mlflow_options = {"tracking_uri": uri, "experiment": experiment, "log_checkpoints": log_checkpoints}
    config["logging"] = {"mlflow": mlflow_options}
    return config


def _search(uri, **query):
    """mlflow.search_runs on the store `uri` (it reads the store from the environment)."""
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        return mlflow.search_runs(output_format="list", **query)
    finally:
        if saved is None:
            del os.environ["MLFLOW_TRACKING_URI"]
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved


def _the_run(uri, experiment):
    (run,) = _search(uri, experiment_names=[experiment])
    return run


def _history(uri, run_id, key):
    return [(m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, key)]


def _expected(run_dir, kind, key):
    return [(r["step"], r[key]) for r in metric_history(run_dir) if r["type"] == kind]


def _assert_each_step_once_as_in_the_run_folder(uri, run_id, run_dir):
    for kind, key in (("train", "loss"), ("train", "lr"), ("epoch", "val_accuracy"), ("epoch", "train_loss")):
        assert _history(uri, run_id, f"{kind}/{key}") == _expected(run_dir, kind, key), f"{kind}/{key}"


def _git(*args, cwd):
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def test_a_run_is_its_config_metrics_tags_and_best_checkpoint_in_the_default_store(tmp_path, monkeypatch):
    commit = None
    if shutil.which("git"):
        _git("init", "-q", cwd=tmp_path)
        (tmp_path / "train.yaml").write_text("# the user's project\n")
        _git("add", "train.yaml", cwd=tmp_path)
        _git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "-m", "one", cwd=tmp_path)
        commit = _git("rev-parse", "HEAD", cwd=tmp_path)
    config = tiny_config(tmp_path, logging={"mlflow": True})
    result = trainkit.train(config, quiet=True)
    run_dir = tmp_path / "ckpt" / "tiny"

    assert (tmp_path / "mlflow.db").exists()  # sqlite:///mlflow.db in the working folder
    uri = "sqlite:///mlflow.db"
    run = _the_run(uri, "Default")
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny"
    params = run.data.params
    assert params["optimizer.lr"] == "0.01" and params["optimizer.name"] == "adam"
    assert params["model.channels"] == "[4, 8]" and params["trainer.grad_clip"] == "null"
    assert params["logging.mlflow.log_checkpoints"] == "best"
    assert params["data.n_train"] == "96" and params["trainer.epochs"] == "2"
    tags = run.data.tags
    assert tags["trainkit.version"] == trainkit.__version__
    assert tags["trainkit.run_dir"] == str(run_dir.resolve())
    assert tags.get("mlflow.source.git.commit") == commit
    _assert_each_step_once_as_in_the_run_folder(uri, run.info.run_id, run_dir)
    assert _history(uri, run.info.run_id, "epoch/val_accuracy")[-1][1] == result["final"]["val_accuracy"]
    client = MlflowClient(uri)
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id)) == ["best.pt", "config.yaml"]
    best = client.download_artifacts(run.info.run_id, "best.pt", str(tmp_path / "down"))
    assert open(best, "rb").read() == (run_dir / "best.pt").read_bytes()
    assert load_ckpt(run_dir / "last.pt")["trackers"] == {
        "mlflow": {"run_id": run.info.run_id, "tracking_uri": "sqlite:///mlflow.db"}
    }


@pytest.mark.parametrize("mode", ["all", "none"])
def test_log_checkpoints_all_or_none(tmp_path, store, mode):
    config = _config(tmp_path, store, f"ckpts-{mode}", log_checkpoints=mode, checkpoint={"every_n_steps": 4})
    trainkit.train(config, quiet=True)
    run = _the_run(store, f"ckpts-{mode}")
    client = MlflowClient(store)
    top = sorted(a.path for a in client.list_artifacts(run.info.run_id))
    if mode == "none":
        assert top == ["config.yaml"]
    else:
        assert top == ["best.pt", "checkpoints", "config.yaml"]
        saved = [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")]
        # every save reached MLflow, also those the rotation (keep_last 2) has deleted since
        assert saved == [f"checkpoints/step-{s:09d}.pt" for s in (4, 6, 8, 12)]
    assert not (tmp_path / "ckpt" / "m" / ".mlflow-staging").exists()


def test_the_tracking_uri_and_experiment_may_come_from_the_environment(tmp_path, store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "from-env")
    trainkit.train(tiny_config(tmp_path, logging={"mlflow": {"log_checkpoints": "none"}}), quiet=True)
    assert _the_run(store, "from-env").info.status == "FINISHED"


def test_values_over_the_length_limit_are_shortened_not_refused(tmp_path, store, monkeypatch):
    monkeypatch.setattr(mlflow_sink, "_limits", lambda: (250, 200, 100))
    deep = tmp_path / ("a" * 120) / ("b" * 120)
    config = _config(tmp_path, store, "long")
    config["checkpoint"] = {"dir": str(deep)}
    trainkit.train(config, quiet=True)
    value = _the_run(store, "long").data.params["checkpoint.dir"]
    assert len(value) <= 200 and value.startswith(str(tmp_path))
    assert value.endswith("characters, shortened by trainkit; the full value is in config.yaml]")


def _stop_at(monkeypatch, step):
    monkeypatch.setattr(Session, "stop_requested", lambda self, state: state.step == step)


def test_a_resumed_run_continues_the_same_mlflow_run(tmp_path, store, monkeypatch):
    config = _config(tmp_path, store, "resumed")
    _stop_at(monkeypatch, 5)
    with pytest.raises(TrainingInterrupted):
        trainkit.train(config, quiet=True)
    monkeypatch.undo()
    first = _the_run(store, "resumed")
    assert first.info.status == "KILLED"
    run_dir = tmp_path / "ckpt" / "m"
    trainkit.resume(run_dir, ["trainer.epochs=3"], quiet=True)
    run = _the_run(store, "resumed")  # still one run
    assert run.info.run_id == first.info.run_id and run.info.status == "FINISHED"
    _assert_each_step_once_as_in_the_run_folder(store, run.info.run_id, run_dir)
    # MLflow params cannot change: the new value is a tag
    assert run.data.params["trainer.epochs"] == "2"
    assert run.data.tags["changed_on_resume.trainer.epochs"] == "3 (from step 5; was 2)"
    assert run.data.tags["trainkit.resumed_at_step"] == "5"
    assert run.data.tags["trainkit.message"] == "interrupted by SIGTERM; checkpoint saved at step 5"


def test_a_run_resumed_with_another_tracking_uri_starts_a_new_mlflow_run_there(tmp_path, store, caplog):
    trainkit.train(_config(tmp_path, store, "moved"), quiet=True)
    other = f"sqlite:///{tmp_path / 'other.db'}"
    run_dir = tmp_path / "ckpt" / "m"
    trainkit.resume(run_dir, ["trainer.epochs=3", f"logging.mlflow.tracking_uri={other}"], quiet=True)
    assert f"MLflow: this run was tracked at {store} and now goes to {other}: it starts a new MLflow run there" in [
        r.getMessage() for r in caplog.records
    ]
    moved = _the_run(other, "moved")
    assert moved.info.run_id != _the_run(store, "moved").info.run_id
    assert [s for s, _ in _history(other, moved.info.run_id, "train/loss")] == [14, 16, 18]  # from the resume on
    assert load_ckpt(run_dir / "last.pt")["trackers"]["mlflow"]["run_id"] == moved.info.run_id


@pytest.mark.slow
def test_kill_9_then_resume_logs_each_step_once(tmp_path, store):
    """Records logged after the last checkpoint are in MLflow when the kill comes; the resumed
    run computes them again and must not log them twice."""
    config = _config(tmp_path, store, "killed", log_checkpoints="none")
    config["data"].update(n_train=960, batch_size=16)
    config["trainer"].update(epochs=2, log_every=1)
    config["checkpoint"]["every_n_steps"] = 7
    run_dir = tmp_path / "ckpt" / "m"
    path = write_config(tmp_path / "m.yaml", config)
    client = MlflowClient(store)
    experiment = None

    def logged_past_checkpoint(checkpoint_step):
        nonlocal experiment
        experiment = experiment or client.get_experiment_by_name("killed")
        if experiment is None or not (run_dir / "latest.json").exists():
            return False
        runs = client.search_runs([experiment.experiment_id])
        if not runs or "train/loss" not in runs[0].data.metrics:
            return False
        history = client.get_metric_history(runs[0].info.run_id, "train/loss")
        return max(m.step for m in history) > checkpoint_step()

    def stopped_past_checkpoint():
        """The run keeps going while MLflow is queried (a checkpoint may come meanwhile): once it
        looks past a checkpoint, freeze it (SIGSTOP) and look again, at last.pt itself."""
        if not logged_past_checkpoint(lambda: json.loads((run_dir / "latest.json").read_text())["step"]):
            return False
        proc.send_signal(signal.SIGSTOP)
        try:
            if logged_past_checkpoint(lambda: load_ckpt(run_dir / "last.pt")["step"]):
                return True
        except Exception:  # frozen mid-commit, it may hold the store's lock: look again later
            pass
        proc.send_signal(signal.SIGCONT)
        return False

    proc = subprocess.Popen(TRAINKIT + ["train", str(path), "-q"], env=subprocess_env(), stderr=subprocess.PIPE)
    deadline = time.time() + 180
    while proc.poll() is None and time.time() < deadline and not stopped_past_checkpoint():
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    (run,) = client.search_runs([experiment.experiment_id])
    before = max(m.step for m in client.get_metric_history(run.info.run_id, "train/loss"))
    assert before > load_ckpt(run_dir / "last.pt")["step"]  # the overlap this test is about
    command = TRAINKIT + ["resume", str(run_dir), "-q"]
    resumed = subprocess.run(command, capture_output=True, text=True, env=subprocess_env())
    assert resumed.returncode == 0, resumed.stderr
    run = _the_run(store, "killed")
    assert run.info.status == "FINISHED"
    _assert_each_step_once_as_in_the_run_folder(store, run.info.run_id, run_dir)
    assert [s for s, _ in _history(store, run.info.run_id, "train/loss")] == list(range(1, 121))


def _failing_log_batch(monkeypatch, fails):
    """MlflowClient.log_batch fails for the calls numbered in `fails` (a server that went away)."""
    real, calls = MlflowClient.log_batch, {"n": 0}

    def log_batch(self, *args, **kwargs):
        calls["n"] += 1
        if fails(calls["n"]):
            raise MlflowException("API request to http://tracking:5000 failed: Connection refused")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", log_batch)


def test_an_mlflow_that_goes_away_mid_run_never_stops_training(cli, tmp_path, store, monkeypatch):
    reference = tiny_config(tmp_path, name="ref", trainer={"epochs": 3})
    trainkit.train(reference, quiet=True)
    config = _config(tmp_path, store, "gone", trainer={"epochs": 3})
    _failing_log_batch(monkeypatch, lambda n: n > 4)  # params, then a few records, then nothing
    code, out, err = cli("train", write_config(tmp_path / "m.yaml", config), "-q")
    assert code == 0, err
    lines = err.strip().splitlines()
    failed = [line for line in lines if " failed (" in line]
    assert failed == [
        f"warning: MLflow ({store}) failed (API request to http://tracking:5000 failed: Connection refused); "
        "training goes on, and trainkit tries again every 30 s"
    ]
    assert lines[-1].startswith(f"warning: MLflow ({store}) did not get: ")
    assert "metric records" in lines[-1]
    assert lines[-1].endswith("(API request to http://tracking:5000 failed: Connection refused)")
    tracked = load_ckpt(tmp_path / "ckpt" / "m" / "last.pt")
    untracked = load_ckpt(tmp_path / "ckpt" / "ref" / "last.pt")
    for key in ("model", "optimizer", "state", "rng"):  # a sink never changes what is trained
        assert_same_tensors(tracked[key], untracked[key], key)


def test_an_mlflow_that_comes_back_gets_everything_once(tmp_path, store, monkeypatch, caplog):
    monkeypatch.setattr(mlflow_sink, "RETRY_SECONDS", 0.1)
    config = _config(tmp_path, store, "back", trainer={"epochs": 3})
    # down for the 4th call: the next try (after RETRY_SECONDS, or the last one at the end if the
    # run ends first) reaches it again. By count, not by time: a fast machine may end the run
    # within any time window, and a tracker still away at the end is given up (the test above)
    _failing_log_batch(monkeypatch, lambda n: n == 4)
    trainkit.train(config, quiet=True)
    run = _the_run(store, "back")
    assert run.info.status == "FINISHED"
    _assert_each_step_once_as_in_the_run_folder(store, run.info.run_id, tmp_path / "ckpt" / "m")
    messages = [r.getMessage() for r in caplog.records if r.name == "trainkit"]
    assert any("is reachable again" in m for m in messages) and not any("did not get" in m for m in messages)


def test_a_tracking_server_that_is_not_there_costs_the_run_nothing(cli, tmp_path, monkeypatch):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")  # a user's own setting wins
    config = _config(tmp_path, f"http://127.0.0.1:{port}", "nowhere")
    code, out, err = cli("train", write_config(tmp_path / "m.yaml", config), "-q")
    assert code == 0, err
    assert f"warning: MLflow (http://127.0.0.1:{port}) failed (" in err
    assert f"warning: MLflow (http://127.0.0.1:{port}) did not get: the MLflow run, " in err
    assert load_ckpt(tmp_path / "ckpt" / "m" / "last.pt")["trackers"] == {"mlflow": {}}  # no run to continue
    # MLflow's own 7 retries took 4 minutes before a call returned, while trainkit could not tell
    # the server was away: the first checkpoint waited 30 s for a run id, the end 120 s
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"
    assert os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] == "0"


def test_a_rejected_tracking_uri_does_not_hold_up_the_first_checkpoint(tmp_path, monkeypatch):
    """The first checkpoint waits for the MLflow run's id; once MLflow has refused to open the run
    (here an unsupported URI), there is none to wait for."""
    import threading

    monkeypatch.setattr(mlflow_sink, "OPEN_WAIT", 3600.0)
    sink = mlflow_sink.MlflowSink(mlflow_sink.MlflowConfig(tracking_uri="bogus://nowhere"))
    sink.start(tmp_path, {"name": "m"}, 0)
    states = []
    waiting = threading.Thread(target=lambda: states.append(sink.state()), daemon=True)
    waiting.start()
    waiting.join(120)  # MLflow's import and its refusal take seconds; the bug waited the hour
    assert not waiting.is_alive() and states == [{}]
    sink.finish("complete", None)


def _write_sweep(folder, **spec):
    """tests/sweeps' sweep file writer (base config and sweep.yaml in `folder`)."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "sweeps"))
    from sweep_helpers import write_sweep

    return write_sweep(folder, **spec)


@pytest.mark.slow
def test_a_sweeps_trials_are_children_of_one_parent_run_also_when_the_sweep_is_run_again(tmp_path, store, cli):
    base = _config(tmp_path, store, "sweep", log_checkpoints="none")
    spec = {
        "overrides": ["trainer.epochs=1"],
        "params": {"optimizer.lr": {"type": "loguniform", "low": 1e-3, "high": 0.1}},
        "sampler": {"name": "random", "seed": 0},
    }
    path = _write_sweep(tmp_path, base=base, trials=2, **spec)
    code, _, err = cli("sweep", path, "-q")
    assert code == 0, err
    parents = _search(store, experiment_names=["sweep"], filter_string="attributes.run_name = 'search'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0].info.run_id
    assert parents[0].data.tags["trainkit.sweep_dir"] == str(tmp_path / "ckpt" / "search")

    def children():
        found = _search(store, experiment_names=["sweep"], filter_string=f"tags.mlflow.parentRunId = '{parent}'")
        return sorted((r.info.run_name, r.info.status) for r in found)

    assert children() == [("trial-0000", "FINISHED"), ("trial-0001", "FINISHED")]
    # two more trials, by the same command with a larger total: the same parent, reopened and finished
    path = _write_sweep(tmp_path, base=base, trials=3, **spec)
    code, _, err = cli("sweep", path, "-q")
    assert code == 0, err
    assert len(_search(store, experiment_names=["sweep"], filter_string="attributes.run_name = 'search'")) == 1
    assert [name for name, _ in children()] == ["trial-0000", "trial-0001", "trial-0002"]
    assert MlflowClient(store).get_run(parent).info.status == "FINISHED"


@pytest.mark.slow
def test_a_sweep_whose_mlflow_is_away_at_its_start_tracks_its_trials_without_a_parent(
    tmp_path, store, cli, monkeypatch
):
    from trainkit.errors import TrainkitError

    def away(settings, name, run_id=None, tags=None):
        raise TrainkitError(f"MLflow ({store}): cannot start the sweep's run: Connection refused")

    monkeypatch.setattr(mlflow_sink, "start_parent_run", away)  # the sweep process only: trials track
    base = _config(tmp_path, store, "orphans", log_checkpoints="none")
    params = {"optimizer.lr": {"type": "choice", "values": [0.01]}}
    path = _write_sweep(tmp_path, base=base, overrides=["trainer.epochs=1"], params=params, trials=1)
    code, _, err = cli("sweep", path, "-q")
    assert code == 0, err
    assert (
        f"warning: MLflow ({store}): cannot start the sweep's run: Connection refused; the trials are tracked "
        "without a parent run" in err
    )
    runs = _search(store, experiment_names=["orphans"])
    assert [(r.info.run_name, r.info.status) for r in runs] == [("trial-0000", "FINISHED")]
    assert "mlflow.parentRunId" not in runs[0].data.tags


def test_asking_for_mlflow_without_it_installed_is_a_config_error(cli, tmp_path, monkeypatch):
    from trainkit import plugins

    trained = _config(tmp_path, "sqlite:///unused.db", "x")
    monkeypatch.setattr(plugins, "has_module", lambda name: name != "mlflow")
    path = write_config(tmp_path / "m.yaml", trained)
    code, _, err = cli("validate", path)
    assert code == 2
    assert err.strip().endswith("logging.mlflow: needs the mlflow package: pip install 'trainkit[mlflow]'")
    code, _, err = cli("train", path, "logging.mlflow=false", "-q")  # without it, the same run trains
    assert code == 0, err
    ckpt = load_ckpt(tmp_path / "ckpt" / "m" / "best.pt")
    ckpt["config"]["logging"]["mlflow"] = {"tracking_uri": None, "experiment": None, "log_checkpoints": "best"}
    import torch

    torch.save(ckpt, tmp_path / "tracked.pt")  # as if trained with MLflow on another machine
    code, out, err = cli("eval", "--ckpt", tmp_path / "tracked.pt", "--json")
    assert code == 0, err  # evaluating needs no tracker


@pytest.mark.slow
def test_under_torchrun_only_rank_0_tracks(tmp_path, store):
    config = _config(tmp_path, store, "ranks", log_checkpoints="none")
    config["data"].update(n_train=128, batch_size=16)
    path = write_config(tmp_path / "m.yaml", config)
    ran = subprocess.run(
        TRAINKIT + ["train", str(path), "-q", "--nproc", "2"], capture_output=True, text=True, env=subprocess_env()
    )
    assert ran.returncode == 0, ran.stderr
    run = _the_run(store, "ranks")
    _assert_each_step_once_as_in_the_run_folder(store, run.info.run_id, tmp_path / "ckpt" / "m")
