"Test helpers: tiny format-exact replicas of the official dataset layouts (see `replicas`)."
from .replicas import (CIFAR10_NAMES, CIFAR100_NAMES, REPLICAS, class_colour, class_grey, make_cifar10,
                       make_cifar100, make_cub, make_dogs, make_fashion_mnist, make_imagefolder, make_imagenet,
                       make_mit67, make_tinyimagenet, replica_classes)

__all__ = ["REPLICAS", "replica_classes", "class_colour", "class_grey", "CIFAR100_NAMES", "CIFAR10_NAMES",
           "make_cifar100", "make_cifar10", "make_tinyimagenet", "make_cub", "make_dogs", "make_mit67",
           "make_imagenet", "make_imagefolder", "make_fashion_mnist"]
