"""Small image classifiers for auditing: a compact CNN, a CIFAR-style ResNet-18 and an MLP, all exposing features()."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """Conv-pool, conv-conv-pool, conv and a linear head: cheap on CPU, >98% train accuracy on digits in a few
    epochs. Only one thin conv runs at full resolution, where most of a CNN's CPU time goes."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 16):
        super().__init__()
        self.body = nn.Sequential(
            _conv_bn(in_channels, width), nn.MaxPool2d(2),
            _conv_bn(width, 2 * width), _conv_bn(2 * width, 2 * width), nn.MaxPool2d(2),
            _conv_bn(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4 * width, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features (used later as the `model` embedding)."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR-style ResNet-18 (3x3 stem, no max-pool), width configurable (64 is the standard network)."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 64):
        super().__init__()
        layers: list[nn.Module] = [_conv_bn(in_channels, width)]
        cin = width
        for i, cout in enumerate((width, 2 * width, 4 * width, 8 * width)):
            for j in range(2):
                layers.append(_BasicBlock(cin, cout, 2 if (i > 0 and j == 0) else 1))
                cin = cout
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(cin, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features (used later as the `model` embedding)."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class MLP(nn.Module):
    """One hidden layer of width*16 ReLU units (784-256-10 on MNIST at width 16); without BatchNorm it has no
    buffers, so many copies can be trained at once as stacked tensors (see auditor.memorization.shadow_engine)."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 16, image_size: int = 28):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size ** 2, 16 * width), nn.ReLU())
        self.head = nn.Linear(16 * width, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Hidden-layer activations (used later as the `model` embedding)."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


ARCHITECTURES = {"small_cnn": SmallCNN, "resnet18": ResNet18, "mlp": MLP}


def build_model(arch: str, in_channels: int, num_classes: int, width: int, image_size: int = 28) -> nn.Module:
    """Instantiate a registered architecture by name; only the MLP's size depends on `image_size`."""
    try:
        cls = ARCHITECTURES[arch]
    except KeyError:
        raise ValueError(f"unknown architecture '{arch}'; use one of: {', '.join(ARCHITECTURES)}") from None
    if cls is MLP:
        return cls(in_channels, num_classes, width, image_size)
    return cls(in_channels, num_classes, width)
