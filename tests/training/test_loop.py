"""The shared loop's conveniences: what each trainer switch does to the training."""

from __future__ import annotations

import json

import pytest
import torch

import trainkit
from conftest import assert_same_tensors, load_ckpt, tiny_config, write_config
from trainkit import DATASETS
from trainkit.builtin.datasets import synthetic_images


def _records(run_dir, kind):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == kind]


def test_gradient_accumulation_equals_the_larger_batch(tmp_path):
    """2 batches of 8 accumulated = 1 batch of 16 (same samples, no batch-norm): same weights."""
    trainkit.train(tiny_config(tmp_path, name="big", data={"batch_size": 16}), quiet=True)
    trainkit.train(
        tiny_config(tmp_path, name="acc", data={"batch_size": 8}, trainer={"accumulate_grad_batches": 2}), quiet=True
    )
    big, acc = load_ckpt(tmp_path / "ckpt" / "big" / "last.pt"), load_ckpt(tmp_path / "ckpt" / "acc" / "last.pt")
    assert big["step"] == acc["step"] == 12
    for key, value in big["model"].items():
        assert torch.allclose(value, acc["model"][key], atol=1e-6), key


def test_limit_batches_and_log_every(tmp_path):
    config = tiny_config(tmp_path, trainer={"limit_batches": 4, "log_every": 3, "limit_eval_batches": 1})
    result = trainkit.train(config, quiet=True)
    run = tmp_path / "ckpt" / "tiny"
    assert result["step"] == 8
    assert [r["step"] for r in _records(run, "train")] == [3, 6]
    assert trainkit.evaluate(run / "last.pt", overrides=["trainer.limit_eval_batches=1"])["samples"] == 20


def test_label_smoothing_changes_only_the_training_loss(tmp_path):
    easy = {"data": {"noise": 5.0}, "trainer": {"epochs": 4}}
    trainkit.train(tiny_config(tmp_path, name="plain", **easy), quiet=True)
    trainkit.train(
        tiny_config(tmp_path, name="smooth", **easy | {"trainer": {"epochs": 4, "label_smoothing": 0.3}}), quiet=True
    )
    plain = _records(tmp_path / "ckpt" / "plain", "epoch")[-1]
    smooth = _records(tmp_path / "ckpt" / "smooth", "epoch")[-1]
    # 4 classes smoothed by 0.3: the target distribution's entropy, 0.78, is the least loss possible
    assert plain["train_loss"] < 0.3 and smooth["train_loss"] > 0.78
    # validation reports plain cross-entropy, so runs with and without smoothing compare
    metrics = trainkit.evaluate(tmp_path / "ckpt" / "smooth" / "last.pt")
    last = _records(tmp_path / "ckpt" / "smooth", "epoch")[-1]
    assert metrics["loss"] == pytest.approx(last["val_loss"], rel=1e-6)


def test_grad_clip_bounds_the_update(tmp_path):
    base = {"optimizer": {"name": "sgd", "lr": 1.0}, "trainer": {"limit_batches": 1, "epochs": 1}}
    trainkit.train(tiny_config(tmp_path, name="free", **base), quiet=True)
    clipped = tiny_config(tmp_path, name="clip", **base)
    clipped["trainer"]["grad_clip"] = 1e-3
    trainkit.train(clipped, quiet=True)
    torch.manual_seed(0)  # what train() does first: the same initial weights
    start = trainkit.MODELS.build("cnn", {"channels": [4, 8], "hidden": 16}, input_shape=(1, 8, 8), num_classes=4)

    def moved(name):
        after = load_ckpt(tmp_path / "ckpt" / name / "last.pt")["model"]
        return torch.sqrt(sum(((after[k] - v) ** 2).sum() for k, v in start.state_dict().items())).item()

    assert moved("clip") == pytest.approx(1e-3, rel=1e-3)  # one SGD step of lr 1 moves by the clipped norm
    assert moved("free") > 10 * moved("clip")


def test_regression_metrics(tmp_path):
    config = tiny_config(
        tmp_path, name="reg", data={"name": "synthetic_regression", "n_train": 200, "n_test": 50, "batch_size": 20}
    )
    config["model"] = {"name": "linear_regression"}
    config["data"] = {k: v for k, v in config["data"].items() if k not in ("size", "num_classes")}
    config["optimizer"] = {"name": "sgd", "lr": 0.1}
    result = trainkit.train(config, quiet=True)
    assert result["monitor"] == "val_loss"
    final = result["final"]
    assert {"train_loss", "val_loss", "val_mse", "val_mae"} <= set(final) and "val_accuracy" not in final
    assert final["val_mse"] == final["val_loss"] and final["val_mae"] < 0.5


class _Squares(torch.utils.data.Dataset):
    """A map-style Dataset of the kind users already have: float images, int labels."""

    def __init__(self, n: int, seed: int):
        gen = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, 3, (n,), generator=gen)
        self.images = torch.randn(n, 1, 8, 8, generator=gen) * 0.3 + self.labels.view(-1, 1, 1, 1).float()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i])


@pytest.fixture
def generic_dataset(isolated_registries):
    from trainkit.training.data import DataBundle

    @trainkit.DATASETS.register("squares")
    def squares(seed: int, n_train: int = 96):
        return DataBundle.from_datasets(_Squares(n_train, seed), _Squares(30, seed + 1), num_classes=3)


@pytest.mark.usefixtures("generic_dataset")
def test_a_generic_torch_dataset_trains_evaluates_and_resumes_exactly(tmp_path, monkeypatch):
    from trainkit.errors import TrainingInterrupted
    from trainkit.training.session import Session

    def config(name):
        return tiny_config(tmp_path, name=name, model={"dropout": 0.2}) | {
            "data": {"name": "squares", "n_train": 96, "batch_size": 16, "eval_batch_size": 10}
        }

    reference = trainkit.train(config("ref"), quiet=True)
    assert reference["final"]["val_accuracy"] > 0.6  # three classes: chance is 0.33
    with monkeypatch.context() as patch, pytest.raises(TrainingInterrupted):
        patch.setattr(Session, "stop_requested", lambda self, state: state.step == 4)
        trainkit.train(config("run"), quiet=True)
    trainkit.resume(tmp_path / "ckpt" / "run", quiet=True)
    a, b = load_ckpt(tmp_path / "ckpt" / "run" / "last.pt"), load_ckpt(tmp_path / "ckpt" / "ref" / "last.pt")
    for key in ("model", "optimizer", "state", "rng"):
        assert_same_tensors(a[key], b[key], key)
    assert trainkit.evaluate(tmp_path / "ckpt" / "run" / "last.pt")["samples"] == 30


def test_a_data_sets_record_is_saved_and_handed_back_on_resume_and_eval(tmp_path, isolated_registries):
    """A builder may return DataBundle.record (e.g. a split it drew); checkpoints keep it and the
    builder gets it back as its `record` input, so resume and eval rebuild the same data."""
    from trainkit import DATASETS
    from trainkit.builtin.datasets import synthetic_images

    seen = []

    @DATASETS.register("recorded_images")
    def recorded_images(seed: int, record: dict | None = None):
        seen.append(record)
        bundle = synthetic_images(seed=seed, n_train=32, n_test=16, size=8, num_classes=4)
        bundle.record = record or {"drawn": torch.tensor([seed, 7])}
        return bundle

    config = tiny_config(tmp_path, data={"name": "recorded_images", "batch_size": 16})
    config["data"] = {k: v for k, v in config["data"].items() if k in ("name", "batch_size", "eval_batch_size")}
    result = trainkit.train(config, quiet=True)
    assert torch.equal(load_ckpt(result["last_checkpoint"])["data_record"]["drawn"], torch.tensor([0, 7]))
    trainkit.resume(result["run_dir"], ["trainer.epochs=3"], quiet=True)
    trainkit.evaluate(result["run_dir"])
    assert seen[0] is None and all(torch.equal(r["drawn"], torch.tensor([0, 7])) for r in seen[1:])
    assert len(seen) == 3


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.targets.__setitem__(5, 4), "its training split: target 4 of sample 5 is not a class index "
         "(num_classes is 4: 0 to 3)"),
        (lambda s: s.targets.__setitem__(2, -1), "its training split: target -1 of sample 2 is not a class index "
         "(num_classes is 4: 0 to 3)"),
        (lambda s: setattr(s, "targets", s.targets[:30]), "its training split has 32 inputs but 30 targets"),
        (lambda s: setattr(s, "targets", s.targets.float()), "its training split has torch.float32 targets; class "
         "indices are integers (torch.long)"),
    ],
)  # fmt: skip
def test_a_builders_split_that_does_not_fit_its_info_is_one_line(tmp_path, isolated_registries, cli, edit, message):
    """Out-of-range class indices were an IndexError traceback from the loss; fewer targets than
    inputs trained on part of the inputs without a word."""

    @DATASETS.register("edited_images")
    def edited_images(seed: int):
        bundle = synthetic_images(seed=seed, n_train=32, n_test=16, size=8, num_classes=4)
        edit(bundle.train)
        return bundle

    config = tiny_config(tmp_path, data={"name": "edited_images", "batch_size": 16})
    config["data"] = {k: v for k, v in config["data"].items() if k in ("name", "batch_size", "eval_batch_size")}
    code, out, err = cli("train", write_config(tmp_path / "c.yaml", config))
    assert code == 2 and err.strip().splitlines() == [f"error: dataset 'edited_images': {message}"]


def test_sinks_receive_every_record_and_checkpoint_and_the_end(tmp_path):
    """A Sink (a tracker, a sweep's pruner) sees what metrics.jsonl gets, in order, on resume too."""

    class Recorder:
        def __init__(self):
            self.events = []

        def start(self, run_dir, config, step):
            self.events.append(("start", step, config["name"]))

        def record(self, record):
            self.events.append((record["type"], record["step"]))

        def checkpoint(self, path, is_best, step):
            self.events.append(("checkpoint", path.name, step))

        def finish(self, status, message):
            self.events.append(("finish", status))

    sink = Recorder()
    result = trainkit.train(tiny_config(tmp_path, trainer={"epochs": 1, "log_every": 3}), quiet=True, sinks=[sink])
    assert sink.events == [
        ("start", 0, "tiny"),
        ("train", 3),
        ("train", 6),
        ("epoch", 6),
        ("checkpoint", "step-000000006.pt", 6),
        ("finish", "complete"),
    ]
    again = Recorder()
    trainkit.resume(result["run_dir"], ["trainer.epochs=2"], quiet=True, sinks=[again])
    assert again.events[0] == ("start", 6, "tiny") and again.events[-1] == ("finish", "complete")
    assert [e for e in again.events if e[0] == "epoch"] == [("epoch", 12)]
