"""CIFAR-style DenseNet-121-BC, as `CIFAR_DenseNet121` in the official CS-KD code.

Yun, Park, Lee, Shin, "Regularizing Class-wise Predictions via Self-knowledge Distillation", CVPR 2020
(github.com/alinlab/cs-kd, models/densenet3.py), which is kuangliu/pytorch-cifar's DenseNet
(Huang et al., "Densely Connected Convolutional Networks", CVPR 2017).

Module names (`conv1`, `dense1..4`, `trans1..3`, `bn`, `linear`) match the official code so its
checkpoints load with `load_state_dict` unchanged.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Bottleneck", "Transition", "CIFARDenseNet", "cifar_densenet121"]


class Bottleneck(nn.Module):
    "DenseNet-BC layer (Huang et al. 2017): BN-ReLU-1x1 conv(4k)-BN-ReLU-3x3 conv(k), concatenated to its input."

    def __init__(self, in_planes: int, growth_rate: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, 4 * growth_rate, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth_rate)
        self.conv2 = nn.Conv2d(4 * growth_rate, growth_rate, kernel_size=3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        # New features first, then the input: the reference's channel order (matters for its checkpoints).
        return torch.cat([out, x], 1)


class Transition(nn.Module):
    "DenseNet-BC transition (Huang et al. 2017): BN-ReLU-1x1 conv (compression), then 2x2 average pooling."

    def __init__(self, in_planes: int, out_planes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_planes)
        self.conv = nn.Conv2d(in_planes, out_planes, kernel_size=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class CIFARDenseNet(nn.Module):
    "DenseNet-BC for small images (CS-KD `CIFAR_DenseNet`): 3x3 stem to 2k channels, no stem BN or pooling."

    def __init__(self, nblocks: tuple[int, ...] = (6, 12, 24, 16), growth_rate: int = 32,
                 reduction: float = 0.5, num_classes: int = 100, in_channels: int = 3):
        super().__init__()
        self.growth_rate = growth_rate
        num_planes = 2 * growth_rate
        self.conv1 = nn.Conv2d(in_channels, num_planes, kernel_size=3, padding=1, bias=False)
        for i, n in enumerate(nblocks, start=1):
            self.add_module(f"dense{i}", self._make_dense(num_planes, n))
            num_planes += n * growth_rate
            if i < len(nblocks):  # no transition after the last dense block
                out_planes = int(math.floor(num_planes * reduction))
                self.add_module(f"trans{i}", Transition(num_planes, out_planes))
                num_planes = out_planes
        self.n_stages = len(nblocks)
        self.bn = nn.BatchNorm2d(num_planes)
        # Adaptive pooling instead of the reference's fixed `avg_pool2d(out, 4)`: identical at 32px,
        # and it also accepts 64px (Tiny-ImageNet) inputs.
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(num_planes, num_classes)

    def _make_dense(self, in_planes: int, n: int) -> nn.Sequential:
        return nn.Sequential(*(Bottleneck(in_planes + j * self.growth_rate, self.growth_rate) for j in range(n)))

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(x)
        for i in range(1, self.n_stages + 1):
            out = getattr(self, f"dense{i}")(out)
            if i < self.n_stages:
                out = getattr(self, f"trans{i}")(out)
        out = self.pool(F.relu(self.bn(out)))
        return self.linear(out.flatten(1))


def cifar_densenet121(num_classes: int = 100, in_channels: int = 3) -> CIFARDenseNet:
    "DenseNet-121-BC (k=32) for 32/64px images, as `CIFAR_DenseNet121` of the official CS-KD code (Yun et al. 2020)."
    return CIFARDenseNet((6, 12, 24, 16), growth_rate=32, reduction=0.5,
                         num_classes=num_classes, in_channels=in_channels)
