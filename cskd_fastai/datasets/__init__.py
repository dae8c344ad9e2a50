"""Loaders for the CS-KD paper's datasets (and a few small real ones) from their official on-disk layouts.

    >>> ds = load_dataset("cub", "/data")          # /data/CUB_200_2011/... or /data itself
    >>> ds.classes[:2], len(ds.train), len(ds.test)

Every loader lists items without decoding them and raises a one-line `DatasetLayoutError` naming the missing
or malformed file when the root does not hold the expected layout.
"""
from .core import DATASETS, IMAGE_EXTENSIONS, DatasetLayoutError, ImageDataset, ImageSplit, load_dataset, register
from .arrays import (FASHION_MNIST_CLASSES, FASHION_MNIST_DEFAULT_ROOT, load_cifar10, load_cifar100, load_digits,
                     load_fashion_mnist)
from .folders import load_cub, load_dogs, load_imagefolder, load_imagenet, load_mit67, load_tinyimagenet

__all__ = ["ImageSplit", "ImageDataset", "DatasetLayoutError", "load_dataset", "DATASETS", "register",
           "IMAGE_EXTENSIONS", "FASHION_MNIST_DEFAULT_ROOT", "FASHION_MNIST_CLASSES",
           "load_cifar10", "load_cifar100", "load_digits", "load_fashion_mnist",
           "load_tinyimagenet", "load_cub", "load_dogs", "load_mit67", "load_imagenet", "load_imagefolder"]
