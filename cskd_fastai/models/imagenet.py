"""ImageNet-style ResNet-18 and DenseNet-121 (torchvision), the CS-KD paper's fine-grained / ImageNet models.

Yun et al., CVPR 2020 train these from scratch (no pretrained weights), so `weights=None` always:
nothing is ever downloaded.
"""
from __future__ import annotations

import torchvision
from torch import nn

__all__ = ["resnet18", "densenet121"]


def _replace_stem(old: nn.Conv2d, in_channels: int, mode: str) -> nn.Conv2d:
    "Copy of `old` taking `in_channels` inputs, Kaiming-initialised with fan `mode` like torchvision does."
    new = nn.Conv2d(in_channels, old.out_channels, kernel_size=old.kernel_size, stride=old.stride,
                    padding=old.padding, bias=old.bias is not None)
    # Match torchvision's own init for this model so only the input width changes.
    nn.init.kaiming_normal_(new.weight, mode=mode, nonlinearity="relu")
    return new


def resnet18(num_classes: int, in_channels: int = 3) -> torchvision.models.ResNet:
    "torchvision ResNet-18 (He et al. 2016), untrained, as used by CS-KD (Yun et al. 2020) on fine-grained sets."
    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    if in_channels != 3:
        model.conv1 = _replace_stem(model.conv1, in_channels, "fan_out")  # torchvision ResNet init
    return model


def densenet121(num_classes: int, in_channels: int = 3) -> torchvision.models.DenseNet:
    "torchvision DenseNet-121 (Huang et al. 2017), untrained, as used by CS-KD (Yun et al. 2020) on fine-grained sets."
    model = torchvision.models.densenet121(weights=None, num_classes=num_classes)
    if in_channels != 3:
        model.features.conv0 = _replace_stem(model.features.conv0, in_channels, "fan_in")  # DenseNet init
    return model
