"""A small VGG-style CNN for CPU quickstarts and experiments (not a paper model)."""
from __future__ import annotations

from torch import nn

__all__ = ["SmallCNN", "small_cnn"]


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    "Three conv stages (width w, 2w, 4w) with BatchNorm, global average pooling and a linear classifier."
    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 32):
        super().__init__()
        w = width
        self.features = nn.Sequential(_block(in_channels, w), _block(w, w), nn.MaxPool2d(2),
                                      _block(w, 2 * w), _block(2 * w, 2 * w), nn.MaxPool2d(2),
                                      _block(2 * w, 4 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.linear = nn.Linear(4 * w, num_classes)   # `linear`, like the paper models, so classifier_of finds it

    def forward(self, x): return self.linear(self.features(x))


def small_cnn(num_classes: int = 10, in_channels: int = 3) -> SmallCNN:
    "A ~0.3M-parameter CNN that trains in seconds on CPU (quickstart, tests, small experiments)."
    return SmallCNN(num_classes, in_channels)
