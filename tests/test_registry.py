"""The Registry: decorator registration, build, names, and its error messages."""

from __future__ import annotations

import pytest

from trainkit.errors import RegistryError
from trainkit.registry import DATASETS, MODELS, OPTIMIZERS, SCHEDULERS, Registry


def _registry() -> Registry:
    return Registry("widget", ["size"], builtins="trainkit.builtin")


def test_register_build_and_names():
    widgets = _registry()

    @widgets.register("round")
    def round_widget(size, color: str = "red"):
        """A round widget."""
        return (size, color)

    @widgets.register()
    def square(size):
        return size

    assert widgets.names() == ["round", "square"]
    assert widgets.build("round", {"color": "blue"}, size=3) == (3, "blue")
    assert (
        widgets.build("square", {}, size=5, unused_runtime_input=1) == 5
    )  # runtime inputs it doesn't take are dropped
    assert list(widgets.options("round")) == ["color"]  # runtime inputs are not options
    assert widgets.get("round").summary == "A round widget."
    assert "round" in widgets and "hexagon" not in widgets


def test_duplicate_name_says_where_the_first_one_was_registered():
    widgets = _registry()

    @widgets.register("w")
    def first(size):
        return size

    with pytest.raises(RegistryError) as info:

        @widgets.register("w")
        def second(size):
            return size

    message = str(info.value)
    assert message.startswith("widget 'w' is already registered by tests.test_registry.") or message.startswith(
        "widget 'w' is already registered by test_registry."
    )
    assert "first" in message and "test_registry.py:" in message and "second" in message


def test_unknown_name_lists_what_exists_and_suggests():
    widgets = _registry()
    widgets.register("sphere")(lambda size: size)
    widgets.register("cube")(lambda size: size)
    with pytest.raises(
        RegistryError, match=r"^unknown widget 'spere'; did you mean 'sphere'\? \(known: cube, sphere\)$"
    ):
        widgets.get("spere")
    with pytest.raises(RegistryError, match=r"^unknown widget 'zzz' \(known: cube, sphere\)$"):
        widgets.build("zzz", {})


def test_classes_register_too_and_their_init_is_the_signature():
    widgets = _registry()

    @widgets.register("box")
    class Box:
        def __init__(self, size, depth: int = 2):
            self.size, self.depth = size, depth

    built = widgets.build("box", {"depth": 7}, size=1)
    assert (built.size, built.depth) == (1, 7)
    assert list(widgets.options("box")) == ["depth"]


def test_builtins_are_registered():
    assert {"linear_regression", "cnn", "mlp"} <= set(MODELS.names())
    assert {"synthetic_regression", "synthetic_images", "mnist", "fashion_mnist", "cifar10"} <= set(DATASETS.names())
    assert set(OPTIMIZERS.names()) == {"sgd", "adam", "adamw", "rmsprop", "adadelta"}
    assert set(SCHEDULERS.names()) == {"step", "cosine", "onecycle"}


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "rmsprop", "adadelta"])
def test_each_optimizer_builds_and_steps(name):
    import torch

    model = torch.nn.Linear(3, 1)
    optimizer = OPTIMIZERS.build(name, {"lr": 0.01}, params=model.parameters())
    model(torch.ones(2, 3)).sum().backward()
    before = model.weight.detach().clone()
    optimizer.step()
    assert not torch.equal(before, model.weight)


@pytest.mark.parametrize("name,options", [("step", {"step_size": 1, "gamma": 0.5}), ("cosine", {}), ("onecycle", {})])
def test_each_scheduler_gets_the_step_counts_from_the_loop(name, options):
    import torch

    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = SCHEDULERS.build(name, options, optimizer=optimizer, total_steps=10, steps_per_epoch=5, epochs=2)
    lrs = []
    for _ in range(10):
        optimizer.step()
        scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    if name == "step":
        assert lrs[3] == pytest.approx(0.1) and lrs[4] == pytest.approx(0.05)  # halves after each 5-step epoch
    else:
        assert lrs[-1] < 0.01  # annealed over exactly the total step count


def test_cnn_sizes_itself_from_the_data_set():
    import torch

    mnist_like = MODELS.build("cnn", {}, input_shape=(1, 28, 28), num_classes=10, num_outputs=10)
    cifar_like = MODELS.build("cnn", {}, input_shape=(3, 32, 32), num_classes=10, num_outputs=10)
    assert mnist_like(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert cifar_like(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert mnist_like.fc1.in_features == 64 * 7 * 7 and cifar_like.fc1.in_features == 64 * 8 * 8
    layers = [type(m).__name__ for m in mnist_like.children()]
    assert layers == ["Conv2d", "Conv2d", "Linear", "Linear", "Dropout"]
    assert (mnist_like.conv1.out_channels, mnist_like.conv2.out_channels, mnist_like.fc1.out_features) == (32, 64, 128)


def test_classifier_on_regression_data_is_a_config_error():
    from trainkit.errors import ConfigError

    with pytest.raises(ConfigError, match="model 'cnn' needs image inputs"):
        MODELS.build("cnn", {}, input_shape=(1,), num_classes=None, num_outputs=1)


def test_fast_cnn_pools_before_batch_norm_and_sizes_itself():
    import torch

    model = MODELS.build(
        "fast_cnn", {"widths": [8, 16], "convs_per_block": 2}, input_shape=(3, 32, 32), num_classes=5, num_outputs=5
    )
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 5)
    first_block = [type(m).__name__ for m in model.blocks[0].modules()][1:]
    assert first_block == [
        "Sequential",
        "Conv2d",
        "BatchNorm2d",
        "ReLU",
        "Sequential",
        "Conv2d",
        "MaxPool2d",
        "BatchNorm2d",
        "ReLU",
    ]
