"""Architectures of the CS-KD paper (Yun et al., CVPR 2020), one small file per family.

CIFAR-100 / Tiny-ImageNet use the CIFAR-style PreAct ResNet-18 and DenseNet-121-BC of the official code;
the fine-grained sets (CUB-200, Stanford Dogs, MIT67) use torchvision's ResNet-18 / DenseNet-121,
all trained from scratch.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from .cifar_densenet import CIFARDenseNet, cifar_densenet121
from .cifar_resnet import CIFARPreActResNet, PreActBlock, cifar_resnet18
from .efficientnet_lite import LITE_MODELS, efficientnet_lite, lite_factory
from .imagenet import densenet121, resnet18
from .small_cnn import SmallCNN, small_cnn

__all__ = ["PAPER_MODELS", "LITE_MODELS", "HEAD_ATTRS", "create_paper_model", "classifier_of", "resolve_arch",
           "resolve_learner_arch", "efficientnet_lite",
           "cifar_resnet18", "cifar_densenet121", "resnet18", "densenet121",
           "CIFARPreActResNet", "CIFARDenseNet", "PreActBlock", "small_cnn", "SmallCNN"]

# Every entry takes (num_classes, in_channels=3); keys are the names recipes and the CLI refer to.
PAPER_MODELS: dict[str, Callable[..., nn.Module]] = {
    "cifar_resnet18": cifar_resnet18,
    "cifar_densenet121": cifar_densenet121,
    "resnet18": resnet18,
    "densenet121": densenet121,
    "small_cnn": small_cnn,   # not from the paper: a fast CPU model for the quickstart and small experiments
}

# Where each known family keeps its final layer: ours (`linear`, as in the official CS-KD code),
# torchvision ResNet (`fc`) and torchvision DenseNet (`classifier`).
HEAD_ATTRS = ("linear", "fc", "classifier")


def create_paper_model(name: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    "Build one of the CS-KD paper's architectures (Yun et al. 2020) by registry name, untrained."
    try:
        factory = PAPER_MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(sorted(PAPER_MODELS))}") from None
    return factory(num_classes=num_classes, in_channels=in_channels)


def resolve_arch(arch: str, head: str = "paper"):
    """What a recipe's `model.arch` names, checked without building anything: a paper-model name (head 'paper'),
    an offline ImageNet-pretrained EfficientNet-Lite (`efficientnet_lite0/1/2`, either head: always fastai's), a
    torchvision model function, or a timm model name (arch 'timm:NAME', head 'fastai'). One-line `ValueError`
    naming the fix for a name that does not exist or a package that is not installed."""
    if arch in LITE_MODELS: return lite_factory(arch)
    if head == "paper":
        if arch not in PAPER_MODELS:
            raise ValueError(f"unknown model {arch!r} for head: paper; valid names: {', '.join(sorted(PAPER_MODELS))} "
                             f"(torchvision or 'timm:NAME' models need head: fastai)")
        return arch
    if arch.startswith("timm:"):
        import importlib.util
        name = arch[5:]
        if importlib.util.find_spec("timm") is None:
            raise ValueError(f"model {arch!r} needs timm, which is not installed: pip install 'cskd-fastai[timm]'")
        import timm
        if not timm.is_model(name):
            raise ValueError(f"timm has no model {name!r}; list them with timm.list_models('{name[:4]}*')")
        return name
    import torchvision.models as tvm
    fn = getattr(tvm, arch, None)
    if not callable(fn) or arch.startswith("_") or arch not in tvm.list_models():
        raise ValueError(f"model {arch!r} is not a torchvision model (e.g. resnet18, resnet50, densenet121); "
                         f"use 'timm:NAME' for timm models or head: paper for {', '.join(sorted(PAPER_MODELS))}")
    return fn


def resolve_learner_arch(arch: str):
    """A string architecture of `cskd_learner` / `plain_learner` as `vision_learner` should get it: the offline
    EfficientNet-Lite factories, a torchvision function, or a timm name ('timm:NAME' or a bare timm name). One
    `ValueError` line listing the valid names for anything else (fastai itself would end in `NameError: timm`)."""
    if arch in LITE_MODELS: return lite_factory(arch)
    import torchvision.models as tvm
    if arch in tvm.list_models() and callable(getattr(tvm, arch, None)): return getattr(tvm, arch)
    import importlib.util
    name = arch[5:] if arch.startswith("timm:") else arch
    if importlib.util.find_spec("timm") is not None:
        import timm
        if timm.is_model(name): return name
        hint = f"or a timm model (timm.list_models('{name[:4]}*'))"
    else:
        hint = "or, with the [timm] extra installed (pip install 'cskd-fastai[timm]'), a timm model"
    raise ValueError(f"unknown architecture {arch!r}; pass a paper model ({', '.join(sorted(PAPER_MODELS))}), an offline "
                     f"pretrained one ({', '.join(sorted(LITE_MODELS))}), a torchvision model (e.g. resnet18, resnet34) "
                     f"{hint}")


def classifier_of(model: nn.Module) -> nn.Linear:
    """Final `nn.Linear` of a paper model or torchvision ResNet/DenseNet; its input is the pooled embedding.

    Hook it with `register_forward_hook` to read the penultimate features (`inputs[0]`, shape (batch, dim)).
    Wrappers exposing `.module` (DataParallel / DDP) are looked through.
    """
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    for attr in HEAD_ATTRS:
        head = getattr(model, attr, None)
        if isinstance(head, nn.Linear):
            return head
    # Unknown family: the last Linear registered is the head for plain feed-forward classifiers.
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise TypeError(f"{type(model).__name__} has no nn.Linear layer to use as classifier")
    return linears[-1]
