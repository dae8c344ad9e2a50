"""Tests for `cskd_fastai.models`: the CS-KD paper's architectures (Yun et al., CVPR 2020).

Parameter counts are checked against counts derived here, arithmetically, from each architecture's
published layer list, never by summing `model.parameters()` of a second model of ours.
"""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from cskd_fastai.models import (PAPER_MODELS, CIFARPreActResNet, cifar_densenet121, cifar_resnet18,
                                classifier_of, create_paper_model, densenet121, resnet18)

NAMES = ["cifar_resnet18", "cifar_densenet121", "resnet18", "densenet121"]
EMBED_DIM = {"cifar_resnet18": 512, "cifar_densenet121": 1024, "resnet18": 512, "densenet121": 1024}


# ---- arithmetic parameter counts -------------------------------------------------------------
def conv(cin: int, cout: int, k: int) -> int: return cin * cout * k * k  # all convs here are bias-free
def bn(c: int) -> int: return 2 * c                                      # affine weight + bias
def linear(i: int, o: int) -> int: return i * o + o


def preact_resnet18_count(num_classes: int, in_channels: int = 3, stem_bn: bool = True) -> int:
    "kuangliu PreActResNet18 (+ CS-KD's stem BN): 3x3 stem, PreAct blocks [2,2,2,2], 1x1 conv shortcuts."
    n = conv(in_channels, 64, 3) + (bn(64) if stem_bn else 0)
    cin = 64
    for planes, stride in zip((64, 128, 256, 512), (1, 2, 2, 2)):
        for s in (stride, 1):
            n += bn(cin) + conv(cin, planes, 3) + bn(planes) + conv(planes, planes, 3)
            if s != 1 or cin != planes: n += conv(cin, planes, 1)
            cin = planes
    return n + linear(512, num_classes)


def densenet_bc_count(num_classes: int, in_channels: int, stem: int, blocks=(6, 12, 24, 16), k: int = 32) -> int:
    "DenseNet-BC: stem conv (3x3 CIFAR / 7x7+BN ImageNet), bottleneck layers, 0.5-compression transitions."
    c = 2 * k
    n = conv(in_channels, c, 3) if stem == 3 else conv(in_channels, c, 7) + bn(c)
    for i, layers in enumerate(blocks):
        for _ in range(layers):
            n += bn(c) + conv(c, 4 * k, 1) + bn(4 * k) + conv(4 * k, k, 3)
            c += k
        if i < len(blocks) - 1:
            n += bn(c) + conv(c, c // 2, 1)
            c //= 2
    return n + bn(c) + linear(c, num_classes)


def resnet18_imagenet_count(num_classes: int, in_channels: int = 3) -> int:
    "torchvision ResNet-18: 7x7 stem + BN, BasicBlocks [2,2,2,2], 1x1 conv + BN downsample."
    n = conv(in_channels, 64, 7) + bn(64)
    cin = 64
    for planes, stride in zip((64, 128, 256, 512), (1, 2, 2, 2)):
        for s in (stride, 1):
            n += conv(cin, planes, 3) + bn(planes) + conv(planes, planes, 3) + bn(planes)
            if s != 1 or cin != planes: n += conv(cin, planes, 1) + bn(planes)
            cin = planes
    return n + linear(512, num_classes)


FORMULA = {
    "cifar_resnet18": lambda nc, ic: preact_resnet18_count(nc, ic),
    "cifar_densenet121": lambda nc, ic: densenet_bc_count(nc, ic, stem=3),
    "resnet18": resnet18_imagenet_count,
    "densenet121": lambda nc, ic: densenet_bc_count(nc, ic, stem=7),
}


def n_params(m: nn.Module) -> int: return sum(p.numel() for p in m.parameters())


def on_meta(factory, *args, **kwargs) -> nn.Module:
    "Build a model on the meta device: shapes only, no init cost, for the counting tests."
    with torch.device("meta"):
        return factory(*args, **kwargs)


# ---- shapes ------------------------------------------------------------------------------------
# Forward passes dominate the run time on CPU, so grayscale is checked at 32px only.
@pytest.mark.parametrize("size, in_channels", [(32, 3), (64, 3), (32, 1)])
@pytest.mark.parametrize("name", ["cifar_resnet18", "cifar_densenet121"])
def test_cifar_output_shape(name, size, in_channels):
    model = create_paper_model(name, num_classes=7, in_channels=in_channels).eval()
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, size, size))
    assert out.shape == (2, 7)


@pytest.mark.parametrize("in_channels", [3, 1])
@pytest.mark.parametrize("name", ["resnet18", "densenet121"])
def test_imagenet_output_shape(name, in_channels):
    model = create_paper_model(name, num_classes=5, in_channels=in_channels).eval()
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, 64, 64))
    assert out.shape == (2, 5)


def test_default_num_classes_is_cifar100():
    assert classifier_of(cifar_resnet18()).out_features == 100
    assert classifier_of(cifar_densenet121()).out_features == 100


# ---- parameter counts --------------------------------------------------------------------------
@pytest.mark.parametrize("in_channels", [3, 1])
@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("name", NAMES)
def test_param_count_matches_formula(name, num_classes, in_channels):
    model = on_meta(create_paper_model, name, num_classes, in_channels)
    assert n_params(model) == FORMULA[name](num_classes, in_channels)


def test_known_preact_resnet18_counts():
    # kuangliu/pytorch-cifar PreActResNet18, 10 classes: 11,171,146; CS-KD adds a stem BN(64) = +128.
    kuangliu = CIFARPreActResNet(num_classes=10, stem_bn=False)
    assert n_params(kuangliu) == 11_171_146 == preact_resnet18_count(10, stem_bn=False)
    assert n_params(cifar_resnet18(10)) == 11_171_274 == 11_171_146 + bn(64)


def test_known_cifar_densenet121_count():
    # DenseNet-121-BC (k=32) with a 3x3 stem: torchvision's 7x7 stem + BN swapped for a 3x3 conv, ~6.96M.
    count = n_params(cifar_densenet121(10))
    assert count == densenet_bc_count(10, 3, stem=3) == 6_956_298
    torchvision_count = n_params(on_meta(torchvision.models.densenet121, weights=None, num_classes=10))
    assert count == torchvision_count - conv(3, 64, 7) - bn(64) + conv(3, 64, 3)


@pytest.mark.parametrize("num_classes", [10, 1000])
@pytest.mark.parametrize("ours, theirs", [(resnet18, torchvision.models.resnet18),
                                          (densenet121, torchvision.models.densenet121)])
def test_imagenet_models_match_torchvision(ours, theirs, num_classes):
    assert n_params(on_meta(ours, num_classes)) == n_params(on_meta(theirs, weights=None, num_classes=num_classes))


def test_torchvision_published_counts():
    # torchvision's documented sizes at 1000 classes, confirming the formulas themselves.
    assert resnet18_imagenet_count(1000) == n_params(on_meta(resnet18, 1000)) == 11_689_512
    assert densenet_bc_count(1000, 3, stem=7) == n_params(on_meta(densenet121, 1000)) == 7_978_856


def test_no_weights_downloaded(monkeypatch):
    def no_download(*args, **kwargs): raise AssertionError("a model tried to download weights")
    # torchvision fetches every pretrained checkpoint through WeightsEnum.get_state_dict.
    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", no_download)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    for name in NAMES:
        create_paper_model(name, 3, in_channels=1)


# ---- official-checkpoint key layout ------------------------------------------------------------
def test_state_dict_keys_follow_official_code():
    # Same module names as alinlab/cs-kd, so its CIFAR checkpoints load with load_state_dict.
    r = cifar_resnet18(100).state_dict()
    assert {"conv1.weight", "bn1.weight", "layer1.0.bn1.weight", "layer2.0.shortcut.0.weight",
            "layer4.1.conv2.weight", "linear.weight", "linear.bias"} <= set(r)
    assert not any(k.startswith("layer1.0.shortcut") for k in r)  # identity shortcut where shapes match
    d = cifar_densenet121(100).state_dict()
    assert {"conv1.weight", "dense1.0.bn1.weight", "dense4.15.conv2.weight", "trans3.conv.weight",
            "bn.weight", "linear.weight"} <= set(d)
    assert not any(k.startswith("trans4") for k in d)


# ---- registry ------------------------------------------------------------------------------------
def test_registry_keys():
    # the paper's four architectures, plus small_cnn (a fast CPU model for the quickstart, not from the paper)
    assert set(PAPER_MODELS) == set(NAMES) | {"small_cnn"}


def test_unknown_name_raises_listing_valid_names():
    with pytest.raises(ValueError) as info:
        create_paper_model("resnet50", 10)
    msg = str(info.value)
    assert "resnet50" in msg and "\n" not in msg
    assert all(name in msg for name in NAMES)


# ---- classifier_of / embedding hook --------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_classifier_hook_gives_embedding(name):
    model = create_paper_model(name, num_classes=6).eval()
    head = classifier_of(model)
    size = 32 if name.startswith("cifar") else 64
    assert isinstance(head, nn.Linear)
    assert head.in_features == EMBED_DIM[name] and head.out_features == 6
    seen = []
    handle = head.register_forward_hook(lambda mod, inputs, output: seen.append(inputs[0]))
    try:
        with torch.no_grad():
            out = model(torch.randn(2, 3, size, size))
    finally:
        handle.remove()
    assert len(seen) == 1 and seen[0].shape == (2, head.in_features)
    # The hooked input really is the last thing before the logits.
    torch.testing.assert_close(head(seen[0]), out)


@pytest.mark.parametrize("factory, dim", [(torchvision.models.resnet18, 512), (torchvision.models.resnet50, 2048),
                                          (torchvision.models.densenet121, 1024)])
def test_classifier_of_torchvision(factory, dim):
    model = on_meta(factory, weights=None, num_classes=4)
    head = classifier_of(model)
    assert head is (model.fc if hasattr(model, "fc") else model.classifier)
    assert head.in_features == dim


def test_classifier_of_looks_through_wrappers_and_falls_back():
    model = cifar_resnet18(10)
    assert classifier_of(nn.DataParallel(model)) is model.linear
    mlp = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    assert classifier_of(mlp) is mlp[2]
    with pytest.raises(TypeError):
        classifier_of(nn.Sequential(nn.Conv2d(3, 3, 1)))


# ---- pretrained: vision_learner's default, said plainly when it cannot be had ------------------------------------
def test_pretrained_follows_vision_learner_and_fails_in_one_line(image_folder, monkeypatch):
    import torchvision
    from urllib.error import URLError
    from conftest import make_dls
    from cskd_fastai import cskd_learner
    dls = make_dls(image_folder)
    calls = []
    def no_network(*a, **k):
        calls.append(a); raise URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    import torchvision.models._api as tv_api
    monkeypatch.setattr(tv_api, "load_state_dict_from_url", no_network)
    with pytest.raises(RuntimeError) as ei:
        cskd_learner(dls, torchvision.models.resnet18)               # default: pretrained, as vision_learner
    msg = str(ei.value)
    assert calls and "\n" not in msg and "pretrained=False" in msg and "resnet18" in msg
    learn = cskd_learner(dls, torchvision.models.resnet18, pretrained=False)
    assert not learn.pretrained_body and len(calls) == 1
    with pytest.warns(UserWarning, match="randomly initialised body"): learn.freeze()
    with pytest.raises(ValueError, match="no pretrained weights"): cskd_learner(dls, "small_cnn", pretrained=True)
    assert not cskd_learner(dls, "small_cnn").pretrained_body
