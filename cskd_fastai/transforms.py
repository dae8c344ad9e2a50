"""Item transforms for the recipes: image loading with clear errors, CIFAR-style pad-and-crop."""
from __future__ import annotations


import numpy as np
from fastai.vision.core import PILImage
from fastai.vision.augment import RandTransform
from PIL import Image, UnidentifiedImageError

from .images import MAX_PIXELS, MAX_SIDE, to_rgb

__all__ = ["load_image", "PadRandomCrop", "ImageReadError"]


class ImageReadError(ValueError):
    "An image file that cannot be decoded (one line naming the file)."


def load_image(item: object) -> PILImage:  # `object`: fastai then accepts paths, arrays and PIL images at predict time
    "Path, numpy array or PIL image -> RGB `PILImage`; an unreadable file names itself and the fix."
    if isinstance(item, PILImage): return item
    if isinstance(item, Image.Image): return PILImage(item.convert("RGB"))
    if isinstance(item, np.ndarray):
        arr = item if item.ndim == 3 else np.repeat(item[..., None], 3, -1)
        return PILImage(Image.fromarray(arr).convert("RGB"))
    try:
        # to_rgb: grey, CMYK and palette as Pillow converts them, 16-bit scaled (a plain convert clips it to white)
        with Image.open(item) as im:
            if max(im.size) > MAX_SIDE: im.draft("RGB", (MAX_SIDE, MAX_SIDE))   # a huge JPEG decodes reduced
            w, h = im.size                                                      # (after the draft, for a JPEG)
            if w * h > MAX_PIXELS:
                raise ValueError(f"{w}x{h} = {w * h / 1e6:.0f} MP, over the {MAX_PIXELS / 1e6:.0f} MP limit")
            im.load(); img = to_rgb(im)   # decodes now, inside the try
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        raise ImageReadError(f"cannot read image {item}: {type(e).__name__}: {' '.join(str(e).split())}; remove or "
                             f"replace the file (`cskd-fastai check RECIPE --verify-images` lists every such file)") from None
    return PILImage(img)


class PadRandomCrop(RandTransform):
    "Zero-pad by `padding` then crop `size` at a random place (training only), as in the CIFAR papers."
    split_idx, order = 0, 1
    def __init__(self, size: int, padding: int = 4, **kwargs):
        super().__init__(p=1., **kwargs)
        self.size, self.padding = size, padding

    def before_call(self, b, split_idx):
        self.i = np.random.randint(0, 2 * self.padding + 1)
        self.j = np.random.randint(0, 2 * self.padding + 1)

    def encodes(self, x: PILImage) -> PILImage:
        w, h = x.size
        canvas = Image.new(x.mode, (w + 2 * self.padding, h + 2 * self.padding))
        canvas.paste(x, (self.padding, self.padding))
        return PILImage(canvas.crop((self.j, self.i, self.j + self.size, self.i + self.size)))
