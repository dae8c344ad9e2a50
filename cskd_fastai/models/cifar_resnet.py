"""CIFAR-style pre-activation ResNet-18, as `CIFAR_ResNet18` in the official CS-KD code.

Yun, Park, Lee, Shin, "Regularizing Class-wise Predictions via Self-knowledge Distillation", CVPR 2020
(github.com/alinlab/cs-kd, models/resnet.py), which builds on kuangliu/pytorch-cifar's PreActResNet18
(He et al., "Identity Mappings in Deep Residual Networks", ECCV 2016).

Module names (`conv1`, `bn1`, `layer1..4`, `shortcut`, `linear`) match the official code so its
checkpoints load with `load_state_dict` unchanged.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PreActBlock", "CIFARPreActResNet", "cifar_resnet18"]


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    # No bias: every conv is followed (directly or after the residual add) by a BatchNorm.
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class PreActBlock(nn.Module):
    "Pre-activation basic block (He et al. 2016): BN-ReLU-conv3x3, BN-ReLU-conv3x3, plus shortcut."
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        # Projection only where the shape changes; a bare 1x1 conv (no BN), as in kuangliu / CS-KD.
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        # The projection sees the pre-activated input, exactly as the reference implementation does.
        shortcut = self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class CIFARPreActResNet(nn.Module):
    """Pre-activation ResNet for small images (CS-KD `CIFAR_ResNet`): 3x3 stem, stride 1, no max-pool.

    `stem_bn=True` is the CS-KD variant (stem conv-BN-ReLU); `stem_bn=False` is kuangliu's original
    PreActResNet (bare stem conv), 128 parameters fewer. Neither has a BN after the last block.
    """

    def __init__(self, num_blocks: tuple[int, ...] = (2, 2, 2, 2), num_classes: int = 100,
                 in_channels: int = 3, stem_bn: bool = True):
        super().__init__()
        self.conv1 = _conv3x3(in_channels, 64)
        self.bn1 = nn.BatchNorm2d(64) if stem_bn else None
        in_planes = 64
        for i, (planes, n, stride) in enumerate(zip((64, 128, 256, 512), num_blocks, (1, 2, 2, 2)), start=1):
            blocks = []
            for s in [stride] + [1] * (n - 1):  # only the first block of a stage downsamples
                blocks.append(PreActBlock(in_planes, planes, s))
                in_planes = planes
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
        # Adaptive pooling instead of the reference's fixed `avg_pool2d(out, 4)`: identical at 32px,
        # and it also accepts 64px (Tiny-ImageNet) inputs.
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(x)
        if self.bn1 is not None:
            out = F.relu(self.bn1(out))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(self.pool(out).flatten(1))


def cifar_resnet18(num_classes: int = 100, in_channels: int = 3) -> CIFARPreActResNet:
    "PreAct ResNet-18 for 32/64px images, as `CIFAR_ResNet18` of the official CS-KD code (Yun et al. 2020)."
    return CIFARPreActResNet((2, 2, 2, 2), num_classes=num_classes, in_channels=in_channels, stem_bn=True)
