"""The trainer's speed switches on the CPU: bf16 autocast, torch.compile, channels_last.

They must train, write plain checkpoints (no `_orig_mod.` prefixes) and keep resume exact.
Speed itself is measured in bench/, never asserted here.
"""

from __future__ import annotations

import shutil

import pytest
import torch

import trainkit
from conftest import assert_same_tensors, load_ckpt, tiny_config
from trainkit.errors import ConfigError, TrainingInterrupted
from trainkit.training.session import Session


def _run(tmp_path, name, **trainer):
    config = tiny_config(tmp_path, name=name, data={"augment": {"crop_padding": 1}})
    config["trainer"].update(trainer)
    return config


@pytest.mark.parametrize(
    "switches", [{"precision": "bf16"}, {"channels_last": True}, {"precision": "bf16", "channels_last": True}]
)
def test_switch_trains_and_resumes_exactly(tmp_path, monkeypatch, switches):
    trainkit.train(_run(tmp_path, "ref", **switches), quiet=True)
    monkeypatch.setattr(Session, "stop_requested", lambda self, state: state.step == 4)
    with pytest.raises(TrainingInterrupted):
        trainkit.train(_run(tmp_path, "run", **switches), quiet=True)
    monkeypatch.undo()
    trainkit.resume(tmp_path / "ckpt" / "run", quiet=True)
    a, b = load_ckpt(tmp_path / "ckpt" / "run" / "last.pt"), load_ckpt(tmp_path / "ckpt" / "ref" / "last.pt")
    for key in ("model", "optimizer", "state"):
        assert_same_tensors(a[key], b[key], key)


def test_bf16_really_runs_in_bf16(tmp_path, monkeypatch):
    seen = []
    original = torch.nn.Conv2d.forward

    def spy(self, x):
        out = original(self, x)
        seen.append(out.dtype)
        return out

    monkeypatch.setattr(torch.nn.Conv2d, "forward", spy)
    trainkit.train(_run(tmp_path, "bf16", precision="bf16", epochs=1), quiet=True)
    assert torch.bfloat16 in seen


def test_fp16_needs_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="trainer.precision: fp16 needs a CUDA device"):
        trainkit.train(_run(tmp_path, "fp16", precision="fp16"), quiet=True)


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("gcc") is None and shutil.which("cc") is None, reason="torch.compile needs a C compiler"
)
def test_compile_trains_and_saves_plain_state_dicts(tmp_path, monkeypatch):
    compiled = []
    real_compile = torch.compile

    def spy(model, *args, **kwargs):
        compiled.append(type(model).__name__)
        return real_compile(model, *args, **kwargs)

    monkeypatch.setattr(torch, "compile", spy)
    config = tiny_config(tmp_path, name="compiled")
    config["trainer"].update(compile=True, epochs=1, limit_batches=3)
    result = trainkit.train(config, quiet=True)
    assert compiled == ["ClassicCNN", "ClassicCNN"]  # the training model and the evaluation model, really compiled
    ckpt = load_ckpt(tmp_path / "ckpt" / "compiled" / "last.pt")
    # the checkpoint holds the plain model's state_dict: the same keys and shapes as an
    # uncompiled run's (a compiled module's would carry `_orig_mod.` prefixes)
    monkeypatch.undo()
    plain = trainkit.train(dict(config, name="plain", trainer={**config["trainer"], "compile": False}), quiet=True)
    reference = load_ckpt(tmp_path / "ckpt" / "plain" / "last.pt")
    assert {k: v.shape for k, v in ckpt["model"].items()} == {k: v.shape for k, v in reference["model"].items()}
    # and they are the weights the compiled run evaluated: eval (not compiled) reports the same
    metrics = trainkit.evaluate(tmp_path / "ckpt" / "compiled" / "last.pt")
    assert metrics["samples"] == 40
    assert metrics["loss"] == pytest.approx(result["final"]["val_loss"], rel=1e-4)
    assert abs(metrics["accuracy"] - result["final"]["val_accuracy"]) <= 1 / 40  # one argmax tie at most
    assert plain["final"]["val_loss"] == pytest.approx(result["final"]["val_loss"], rel=1e-3)


def test_nets_skip_layers_that_do_nothing_but_keep_their_keys():
    """MLP and cnn leave Flatten and Dropout(0) uncalled (module calls cost CPU time), with the
    same state_dict keys and outputs as the plain Sequential; a real dropout still drops."""
    from trainkit.builtin.nets import MLP, ClassicCNN

    torch.manual_seed(0)
    mlp = MLP(12, 3, [8, 4])
    assert [k for k in mlp.state_dict()] == ["layers.1.weight", "layers.1.bias", "layers.4.weight",
                                              "layers.4.bias", "layers.7.weight", "layers.7.bias"]  # fmt: skip
    x = torch.randn(5, 3, 4)
    assert torch.equal(mlp(x), mlp.layers(x))
    calls = []
    for layer in mlp.layers:
        layer.register_forward_hook(lambda m, i, o: calls.append(type(m).__name__))
    mlp(x)
    assert calls == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]
    dropped = MLP(12, 3, [8], dropout=0.5).train()
    assert not torch.equal(dropped(x), dropped.eval()(x))
    cnn = ClassicCNN(1, 8, 8, 3, (2, 4), 6, dropout=0.5).train()
    image = torch.randn(2, 1, 8, 8)
    assert not torch.equal(cnn(image), cnn.eval()(image))
    cnn.dropout.p = 0.0
    assert torch.equal(cnn.train()(image), cnn.eval()(image))


def test_an_unset_eval_batch_size_follows_the_device(tmp_path):
    """Unset: 128 on the CPU (smaller activations stay in its caches), 1000 on a GPU; a value
    given is used as given; a run and eval go on with it unset."""
    from trainkit.config import resolve
    from trainkit.training.build import eval_batch_size

    config = tiny_config(tmp_path)
    config["data"].pop("eval_batch_size")
    cfg = resolve(config)
    assert cfg.data.eval_batch_size is None
    assert eval_batch_size(cfg, torch.device("cpu")) == 128
    assert eval_batch_size(cfg, torch.device("cuda")) == 1000
    config["data"]["eval_batch_size"] = 7
    assert eval_batch_size(resolve(config), torch.device("cpu")) == 7
    config["data"] |= {"eval_batch_size": None, "n_test": 300}
    result = trainkit.train(config, quiet=True)
    assert trainkit.evaluate(result["run_dir"])["samples"] == 300
