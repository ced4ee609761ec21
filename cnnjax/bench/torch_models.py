"""The benchmark's PyTorch twins of two cnnjax models (imported only when torch is installed).

* :func:`cifar_resnet` — He et al. 2016 §4.2 CIFAR ResNet-(6n+2), option-A (subsample + zero-pad)
  shortcuts, BN momentum 0.1 / eps 1e-5, no conv biases: the same network as
  ``create_model("resnet20")`` etc. (parameter counts equal).
* :func:`lenet5` — LeNet-5 as :class:`cnnjax.models.LeNet5`: C1 5×5×6, S2 trainable subsampling,
  C3 with Table I's connections (a masked dense 5×5 conv), S4, C5 5×5×120, F6 84, output;
  ``1.7159 tanh(2x/3)`` after every layer but the last.

Used by ``cnnjax bench train`` to time the same training step (SGD + momentum + weight decay)
in PyTorch side by side with JAX.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

CIFAR_DEPTHS = {"resnet20": 3, "resnet32": 5, "resnet44": 7, "resnet56": 9, "resnet110": 18}


class _BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.stride, self.pad = stride, c_out - c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        shortcut = x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x
        if self.pad:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, self.pad))
        return F.relu(y + shortcut)


class CifarResNet(nn.Module):
    """``(N, 3, 32, 32) -> (N, num_classes)``; ``n`` blocks per stage at widths 16/32/64."""

    def __init__(self, n: int, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        blocks, c_in = [], 16
        for i, width in enumerate((16, 32, 64)):
            for j in range(n):
                blocks.append(_BasicBlock(c_in, width, 2 if i > 0 and j == 0 else 1))
                c_in = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu(self.bn1(self.conv1(x))))
        return self.fc(x.mean(dim=(2, 3)))


def _c3_mask() -> torch.Tensor:
    from cnnjax.models.lenet import LENET5_C3_TABLE  # (6 inputs, 16 outputs) booleans

    table = torch.tensor(LENET5_C3_TABLE, dtype=torch.float32)
    return table.T[:, :, None, None]  # (C_out, C_in, 1, 1)


class _Subsampling(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.coefficient = nn.Parameter(torch.ones(channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 2) * self.coefficient + self.bias


def _squash(x: torch.Tensor) -> torch.Tensor:
    return 1.7159 * torch.tanh(x * (2.0 / 3.0))


class LeNet5(nn.Module):
    """``(N, 1, 32, 32) -> (N, num_classes)``, the cnnjax LeNet-5 (softmax output)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.c1 = nn.Conv2d(1, 6, 5)
        self.s2 = _Subsampling(6)
        self.c3 = nn.Conv2d(6, 16, 5)
        self.register_buffer("c3_mask", _c3_mask())
        self.s4 = _Subsampling(16)
        self.c5 = nn.Conv2d(16, 120, 5)
        self.f6 = nn.Linear(120, 84)
        self.output = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _squash(self.s2(_squash(self.c1(x))))
        x = F.conv2d(x, self.c3.weight * self.c3_mask, self.c3.bias)
        x = _squash(self.s4(_squash(x)))
        x = _squash(self.c5(x)).flatten(1)
        return self.output(_squash(self.f6(x)))


def build(name: str, num_classes: int) -> nn.Module | None:
    """The torch twin of cnnjax model ``name``, or ``None`` when there is none."""
    if name in CIFAR_DEPTHS:
        return CifarResNet(CIFAR_DEPTHS[name], num_classes)
    if name == "lenet5":
        return LeNet5(num_classes)
    return None
