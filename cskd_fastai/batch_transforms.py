"""Augmentation on whole batches on the loader's device (`train.gpu_augment`): flip, pad-and-crop and random-resized
crop per sample inside a batch transform, instead of per item in PIL. Training only: the valid/test item pipeline is
exactly the item-level one, so validation numbers and exported learners do not depend on it."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from fastai.data.transforms import ToTensor
from fastai.torch_core import TensorImage
from fastai.vision.augment import RandomResizedCrop, RandTransform, Resize

__all__ = ["BatchFlip", "BatchPadCrop", "BatchResizedCropFlip", "SquashResize", "device_aug_tfms"]


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

    The valid/test item pipeline is exactly the one of the item-level augmentation (`pipeline.item_tfms`), so
    validation numbers and exported learners do not depend on `gpu_augment`.
    """
    if augment == "resized_crop_flip":
        return [SquashResize(size), ToTensor()], [BatchResizedCropFlip(size)]
    batch = []
    if augment in ("crop", "crop_flip"): batch.append(BatchPadCrop(padding=max(1, size // 8)))
    if augment in ("flip", "crop_flip"): batch.append(BatchFlip(0.5))
    return [Resize(size), ToTensor()], batch
