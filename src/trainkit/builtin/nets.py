"""The torch modules behind the built-in model names (see models.py for the builders)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class ClassicCNN(nn.Module):
    """conv(32) -> pool -> conv(64) -> pool -> fc(128) -> fc(classes), 3x3 convs with padding 1.

    The classic PyTorch MNIST network, sized from the input so the same definition
    serves 1x28x28 (MNIST) and 3x32x32 (CIFAR-10).
    """

    def __init__(
        self,
        in_channels: int,
        height: int,
        width: int,
        num_classes: int,
        channels: tuple[int, int] = (32, 64),
        hidden: int = 128,
        dropout: float = 0.0,
    ):
        super().__init__()
        c1, c2 = channels
        self.conv1 = nn.Conv2d(in_channels, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.fc1 = nn.Linear(c2 * (height // 4) * (width // 4), hidden)
        self.fc2 = nn.Linear(hidden, num_classes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        if self.dropout.p:  # a module call that does nothing costs ~1% of a small net's CPU step
            x = self.dropout(x)
        x = F.relu(self.fc1(x))
        if self.dropout.p:
            x = self.dropout(x)
        return self.fc2(x)


class MLP(nn.Module):
    """Flatten -> (Linear -> ReLU -> Dropout) x len(hidden) -> Linear."""

    def __init__(self, in_features: int, num_outputs: int, hidden: list[int], dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, num_outputs))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The layers one by one, leaving out the ones that do nothing (Flatten, done here, and
        # Dropout(0)): each module call costs microseconds, ~5% of a small MLP's CPU step.
        # They stay in `layers` so that the state_dict keys keep their numbering.
        x = torch.flatten(x, 1)
        for layer in self.layers:
            if isinstance(layer, nn.Flatten) or (isinstance(layer, nn.Dropout) and not layer.p):
                continue
            x = layer(x)
        return x


def _conv_bn(c_in: int, c_out: int, pool: bool = False) -> nn.Sequential:
    # Pooling right after the convolution (max-pool commutes with the per-channel affine BN
    # and with ReLU, up to BN's sign) runs BN and ReLU on a quarter of the pixels: on a CPU
    # that is about a fifth of the step time.
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)]
    layers += [nn.MaxPool2d(2)] if pool else []
    return nn.Sequential(*layers, nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class FastCNN(nn.Module):
    """A small conv-BN net for time-to-accuracy recipes.

    Blocks of 3x3 convolutions, the last of each block followed by a 2x2 max-pool, then BN
    and ReLU; a global max-pool; one linear layer with a fixed logit scale (a trick from
    fast CIFAR recipes that lets BatchNorm nets train at high learning rates without a
    large final layer).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        widths: list[int],
        convs_per_block: int = 1,
        logit_scale: float = 0.125,
    ):
        super().__init__()
        blocks, c_in = [], in_channels
        for width in widths:
            layers = [
                _conv_bn(c_in if i == 0 else width, width, pool=(i == convs_per_block - 1))
                for i in range(convs_per_block)
            ]
            blocks.append(nn.Sequential(*layers))
            c_in = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(c_in, num_classes, bias=False)
        self.logit_scale = logit_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(x)
        x = torch.amax(x, dim=(2, 3))
        return self.head(x) * self.logit_scale


def flat_size(shape: tuple[int, ...]) -> int:
    return math.prod(shape)
