"Class names each replica's loader reports, in label order: like the real releases', they sort unlike the ids."
from __future__ import annotations

from typing import Callable, Sequence

from .common import wnid

__all__ = ["CIFAR100_NAMES", "CIFAR10_NAMES", "FASHION_NAMES", "IMAGENET_NAMES", "named", "tiny_name", "cub_species",
           "cub_folder", "dog_folder", "mit_class", "replica_classes"]

CIFAR100_NAMES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can "
    "castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin "
    "elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster "
    "man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck "
    "pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk "
    "skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger "
    "tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm").split()
CIFAR10_NAMES = "airplane automobile bird cat deer dog frog horse ship truck".split()
assert len(CIFAR100_NAMES) == 100 and len(CIFAR10_NAMES) == 10

DOG_FOLDERS = ["n02085620-Chihuahua", "n02085782-Japanese_spaniel", "n02085936-Maltese_dog", "n02086079-Pekinese",
               "n02086240-Shih-Tzu", "n02086646-Blenheim_spaniel", "n02086910-papillon", "n02087046-toy_terrier",
               "n02087394-Rhodesian_ridgeback", "n02088094-Afghan_hound"]
MIT67_CLASSES = ["airport_inside", "artstudio", "auditorium", "bakery", "bar", "bathroom", "bedroom", "bookstore",
                 "bowling", "buffet"]
FASHION_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot"]

# the first classes of the real releases, in id order: their names do not sort like their ids
CUB_NAMES = ["Black_footed_Albatross", "Laysan_Albatross", "Sooty_Albatross", "Groove_billed_Ani", "Crested_Auklet",
              "Least_Auklet", "Parakeet_Auklet", "Rhinoceros_Auklet", "Brewer_Blackbird", "Red_winged_Blackbird"]
TINY_NAMES = ["goldfish", "European fire salamander", "bullfrog", "tailed frog", "American alligator",
               "boa constrictor", "trilobite", "scorpion", "black widow", "tarantula"]
IMAGENET_NAMES = ["tench", "goldfish", "great white shark", "tiger shark", "hammerhead", "electric ray", "stingray",
                   "cock", "hen", "ostrich"]


def named(names: Sequence[str], i: int, fallback: str) -> str:
    # past the real list: descending letters keep the names sorting unlike the ids
    return names[i] if i < len(names) else f"{chr(ord('z') - i % 26)}_{fallback}_{i:03d}"


def tiny_name(i: int) -> str:
    return named(TINY_NAMES, i, "thing")


def cub_species(i: int) -> str:
    return named(CUB_NAMES, i, "Bird")


def cub_folder(cid: int, i: int) -> str:
    return f"{cid:03d}.{cub_species(i)}"


def dog_folder(i: int) -> str:
    return DOG_FOLDERS[i] if i < len(DOG_FOLDERS) else f"n{3000000 + i:08d}-breed_{i:03d}"


def mit_class(i: int) -> str:
    return MIT67_CLASSES[i] if i < len(MIT67_CLASSES) else f"scene_{i:03d}"


def replica_classes(name: str, n_classes: int = 5, names: bool = False) -> list[str]:
    """Class names, in label order, that `load_dataset(name, make_<name>(root, n_classes=n_classes))` reports
    (Fashion-MNIST always reports its 10 names; its replica uses labels 0..n_classes-1)."""
    r = range(n_classes)
    table: dict[str, Callable[[], list[str]]] = {
        "cifar100": lambda: CIFAR100_NAMES[:n_classes],
        "cifar10": lambda: CIFAR10_NAMES[:n_classes],
        "tinyimagenet": lambda: [tiny_name(i) for i in r],
        "cub": lambda: [cub_species(i) for i in r],
        "dogs": lambda: [dog_folder(i).split("-", 1)[1] for i in r],
        "mit67": lambda: [mit_class(i) for i in r],
        "imagenet": lambda: [named(IMAGENET_NAMES, i, "object") if names else wnid(i) for i in r],
        "imagefolder": lambda: [f"class_{i:02d}" for i in r],
        "fashion_mnist": lambda: list(FASHION_NAMES),  # a fixed dataset: always its 10 names
    }
    return list(table[name]())
