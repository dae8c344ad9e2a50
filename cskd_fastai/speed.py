"""Single-device speed options of a recipe (`train:` keys): channels_last, torch.compile, augmentation on the device.

* `channels_last: true`  -- the model and every 4-D input batch in `torch.channels_last` memory format. The batch is
  converted by `ChannelsLast.before_batch`, ordered before `CSKD`, so the CS-KD partners (a slice of the same paired
  batch tensor) reach the model in channels_last too.
* `compile: true`        -- `torch.compile` of the model *in place* (`nn.Module.compile`-style): `learn.model` stays
  the original module, so state_dict keys, checkpoints, `--resume` and `learn.export` are unchanged (a module pickles
  without its compiled call), and the CS-KD partner pass goes through the same compiled module. If compiling fails
  (no compiler, unsupported platform), one warning line is printed and training continues eagerly.
* `gpu_augment: true`    -- flip / pad-and-crop / random-resized-crop run per sample on whole batches on the
  loader's device (`batch_tfms`) instead of per item in PIL (`item_tfms`). Training only: validation, test and
  exported learners keep exactly the item pipeline of `gpu_augment: false`.
* Loader workers: pinned memory when CUDA is used and `workers > 0`. Persistent workers are *not* enabled:
  fastai 2.8's `DataLoader.__iter__` builds a new worker iterator every epoch (workers respawn regardless) and its
  workers hold that epoch's index list, so `persistent_workers=True` would only leave idle workers behind.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from fastai.callback.core import Callback
from fastai.data.transforms import ToTensor
from fastai.torch_core import TensorImage
from fastai.vision.augment import RandomResizedCrop, RandTransform, Resize
from torch import nn

from .callbacks.cskd import CSKD

__all__ = ["ChannelsLast", "channels_last", "compile_model", "is_compiled", "BatchFlip", "BatchPadCrop",
           "BatchResizedCropFlip", "SquashResize", "device_aug_tfms", "loader_kwargs", "apply_speed_options"]


# ---- channels_last ------------------------------------------------------------------------------------
def channels_last(x):
    "4-D tensors in channels_last memory format; anything else unchanged."
    if isinstance(x, torch.Tensor) and x.dim() == 4: return x.contiguous(memory_format=torch.channels_last)
    return x


class ChannelsLast(Callback):
    "Model and input batches in channels_last. Runs before `CSKD` splits the batch, so partners are converted too."
    order = CSKD.order - 1
    def before_fit(self): self.learn.model.to(memory_format=torch.channels_last)
    def before_batch(self): self.learn.xb = tuple(channels_last(x) for x in self.xb)


# ---- torch.compile ------------------------------------------------------------------------------------
def _plain_arg(a):
    return a.as_subclass(torch.Tensor) if isinstance(a, torch.Tensor) and type(a) is not torch.Tensor else a


class _GuardedCompiledCall:
    "The compiled `_call_impl` of a module; on a compile failure: one warning line, then eager for good."
    def __init__(self, module: nn.Module, compiled: Callable, log: Callable[[str], None]):
        self.module, self.compiled, self.log = module, compiled, log

    def __call__(self, *args, **kwargs):
        try:  # plain tensors in: dynamo cannot trace through fastai's `TensorBase.__torch_function__` (wrong shapes)
            return self.compiled(*[_plain_arg(a) for a in args], **{k: _plain_arg(v) for k, v in kwargs.items()})
        except Exception as e:
            out = self.module._call_impl(*args, **kwargs)   # the model's own errors re-raise here, from eager code
            self.module._compiled_call_impl = None          # eager works and compiled did not: stay eager
            first = (str(e).strip().splitlines() or [""])[0][:200]
            self.log(f"warning: train.compile: torch.compile failed ({type(e).__name__}: {first}); training eager")
            return out


def compile_model(model: nn.Module, log: Callable[[str], None] = print, **compile_kwargs) -> bool:
    """Compile `model` in place (its `__call__` goes through `torch.compile`); False, with one warning, if unavailable.

    The module object, its class and its state_dict keys are unchanged; pickling (``learn.export``, deepcopy) drops
    the compiled call (`nn.Module.__getstate__`), so exports load as plain eager modules.
    """
    try:
        compiled = torch.compile(model._call_impl, **compile_kwargs)
    except Exception as e:  # e.g. "Dynamo is not supported on Python 3.x"
        log(f"warning: train.compile: torch.compile is unavailable ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            "training eager")
        return False
    model._compiled_call_impl = _GuardedCompiledCall(model, compiled, log)
    return True


def is_compiled(model: nn.Module) -> bool:
    "Whether `model`'s calls currently go through `compile_model`'s compiled call."
    return isinstance(getattr(model, "_compiled_call_impl", None), _GuardedCompiledCall)


# ---- augmentation on the device -----------------------------------------------------------------------
def _plain(x: torch.Tensor) -> torch.Tensor: return x.as_subclass(torch.Tensor)


class BatchFlip(RandTransform):
    "Horizontal flip of each image of a batch with probability `p` (independently per image), training only."
    split_idx, order = 0, 25
    def __init__(self, p: float = 0.5):
        super().__init__(p=1.0)
        self.p_flip = p

    def encodes(self, x: TensorImage):
        t = _plain(x)
        m = torch.rand(t.shape[0], device=t.device) < self.p_flip
        return TensorImage(torch.where(m[:, None, None, None], t.flip(-1), t))


class BatchPadCrop(RandTransform):
    "Zero-pad each image by `padding` and crop its original size at a random place per image (CIFAR), training only."
    split_idx, order = 0, 20   # after IntToFloatTensor (10) and before Normalize (99): the padding is black, as in PIL
    def __init__(self, padding: int = 4):
        super().__init__(p=1.0)
        self.padding = padding

    def encodes(self, x: TensorImage):
        t, p = _plain(x), self.padding
        n, _, h, w = t.shape
        tp = F.pad(t, (p, p, p, p))
        i = torch.randint(0, 2 * p + 1, (n,), device=t.device)
        j = torch.randint(0, 2 * p + 1, (n,), device=t.device)
        rows = (i[:, None] + torch.arange(h, device=t.device))[:, :, None]          # (n, h, 1)
        cols = (j[:, None] + torch.arange(w, device=t.device))[:, None, :]          # (n, 1, w)
        out = tp.permute(0, 2, 3, 1)[torch.arange(n, device=t.device)[:, None, None], rows, cols]  # (n, h, w, c)
        return TensorImage(out.permute(0, 3, 1, 2).contiguous())


class BatchResizedCropFlip(RandTransform):
    """Per-image random-resized crop (area `min_scale`..1 of the image, aspect ratio in `ratio`) and horizontal flip
    with probability `p_flip`, as one bilinear `grid_sample` per batch; training only."""
    split_idx, order = 0, 20
    def __init__(self, size: int, min_scale: float = 0.08, ratio=(3 / 4, 4 / 3), p_flip: float = 0.5, tries: int = 10):
        super().__init__(p=1.0)
        self.size, self.min_scale, self.ratio, self.p_flip, self.tries = size, min_scale, tuple(ratio), p_flip, tries

    def encodes(self, x: TensorImage):
        t = _plain(x)
        n, c, h, w = t.shape
        dev, dt = t.device, torch.float32
        area = torch.empty(n, self.tries, device=dev, dtype=dt).uniform_(self.min_scale, 1.0)
        logr = torch.empty(n, self.tries, device=dev, dtype=dt).uniform_(math.log(self.ratio[0]), math.log(self.ratio[1]))
        r = logr.exp()
        fw, fh = (area * r * h / w).sqrt(), (area / r * w / h).sqrt()             # crop size as fractions of w, h
        ok = (fw <= 1) & (fh <= 1)
        first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1, device=dev))
        k = first.clamp_min(0)[:, None]
        fw = torch.where(first >= 0, fw.gather(1, k)[:, 0], torch.ones(n, device=dev, dtype=dt))  # fallback: whole image
        fh = torch.where(first >= 0, fh.gather(1, k)[:, 0], torch.ones(n, device=dev, dtype=dt))
        cx = (torch.rand(n, device=dev, dtype=dt) * 2 - 1) * (1 - fw)              # crop centre, normalised coordinates
        cy = (torch.rand(n, device=dev, dtype=dt) * 2 - 1) * (1 - fh)
        flip = torch.where(torch.rand(n, device=dev) < self.p_flip, -1.0, 1.0).to(dt)
        theta = torch.zeros(n, 2, 3, device=dev, dtype=dt)
        theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = fw * flip, cx, fh, cy
        grid = F.affine_grid(theta, (n, c, self.size, self.size), align_corners=False)
        out = F.grid_sample(t.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
        return TensorImage(out.to(t.dtype))


class SquashResize(RandomResizedCrop):
    "Training: the whole image resized to `size` (the crop happens on the device). Valid/test: `RandomResizedCrop`'s."
    def before_call(self, b, split_idx):
        super().before_call(b, split_idx)
        if not split_idx: self.tl, self.cp_size, self.final_size = (0, 0), self.orig_sz, self.size


def device_aug_tfms(size: int, augment: str) -> tuple[list, list]:
    """(item_tfms, augmentation batch_tfms) of `augment` with flips and crops moved to the batch.

    The valid/test item pipeline is exactly the one of the item-level augmentation (`train._item_tfms`), so
    validation numbers and exported learners do not depend on `gpu_augment`.
    """
    if augment == "resized_crop_flip":
        return [SquashResize(size), ToTensor()], [BatchResizedCropFlip(size)]
    batch = []
    if augment in ("crop", "crop_flip"): batch.append(BatchPadCrop(padding=max(1, size // 8)))
    if augment in ("flip", "crop_flip"): batch.append(BatchFlip(0.5))
    return [Resize(size), ToTensor()], batch


# ---- loaders ------------------------------------------------------------------------------------------
def loader_kwargs(workers: int, device=None) -> dict:
    "Worker settings for fastai loaders: pinned host memory when batches go to CUDA through worker processes."
    cuda = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
    return dict(num_workers=workers, pin_memory=bool(cuda and workers > 0))


# ---- wiring -------------------------------------------------------------------------------------------
def apply_speed_options(learn, tc, log: Callable[[str], None] = print):
    "`train.channels_last` and `train.compile` of a recipe on a built learner (mixed precision is set by the caller)."
    from .learner import register_training_only
    if tc.channels_last:
        register_training_only(ChannelsLast)   # exports stay plain: no speed callback inside export.pkl
        learn.model.to(memory_format=torch.channels_last)
        learn.add_cb(ChannelsLast())
    if tc.compile: compile_model(learn.model, log=log)
    return learn
