#!/usr/bin/env python
"""Training throughput of CS-KD vs cross-entropy, and vs a plain-PyTorch reference loop, on one device.

    .venv/bin/python bench/throughput.py --quick                                   # CPU smoke run (tiny sizes)
    .venv/bin/python bench/throughput.py --data /work/shared/datasets/cub100/CUB_200_2011
    .venv/bin/python bench/throughput.py --data ... --channels-last --mixed-precision bf16 --compile --gpu-augment

Configurations (full run; `--configs` picks a subset):

* ``cifar``  : CIFAR-style PreAct ResNet-18 (`create_paper_model("cifar_resnet18", 100)`), 32 px, B = 128
* ``r18b32`` : ResNet-18 (`"resnet18"`), 224 px, B = 32
* ``r18b64`` : ResNet-18, 224 px, B = 64

each on two data sources: ``synthetic`` (in-memory uint8 tensors in a fastai `Datasets`: loading is one stack, the
model dominates) and ``real`` (an image dataset from `--data`, decoded from disk with the training pipeline of
`cskd_fastai.train.build_dls`: PIL decode, resize, augmentation; `--workers` loader processes).

Per configuration and data source, four trainers see the same anchors per epoch, the same initial weights and the
same optimizer (SGD, momentum 0.9, wd 1e-4), interleaved (CE, CS-KD, stored, reference, CE, ...) after one untimed
warm-up round, so drift of the machine hits all alike; medians over `--rounds` are reported:

* CE        : `train.build_learner` for a `ce` recipe: batches of B images, forward + backward.
* CS-KD     : `train.build_learner` for a `cskd` recipe: `PairedDL` batches of B anchors + B partners, forward +
              backward on the anchors, one `no_grad` forward on the partners (the `CSKD` callback).
* stored    : `train.build_learner` for a `cskd_stored` recipe: CE's batches (with sample ids), partners drawn on the
              device and their logits read from the per-sample store (`StoredCSKD`): no partner pass.
* reference : a plain-PyTorch fp32 loop written from the method description (what the official implementation
              does): sample B anchors and, for each, a random other image of its class; forward the anchors with
              grad, forward the partners under `no_grad`; loss = CE(anchors) + λ·T²·KL(softmax(partner/T) ‖
              softmax(anchor/T)); SGD step. It uses the same data (tensors, or a torchvision-style Dataset +
              DataLoader decoding the same files with the same augmentation) and never any speed option.

Time per epoch is the training phase only (validation is skipped). "anchor img/s" = training anchors / epoch time.
Ratios: CS-KD/CE time per epoch (the price of CS-KD per anchor; the floor is ~4/3, see bench/overhead.py), stored/CE
time per epoch (the price of the stored form: ~1 if the draw and the store cost nothing) and
CS-KD/reference anchor images/s (>= 1: the fastai implementation is at least as fast as the plain loop). On CUDA
the peak allocated GPU memory of each trainer's epoch is reported too.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=UserWarning)

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import fastai
from fastai.callback.core import Callback, CancelValidException
from fastai.callback.progress import ProgressCallback
from fastai.data.core import Datasets
from fastai.data.transforms import Categorize, IntToFloatTensor, Normalize
from fastai.torch_core import set_seed
from fastai.vision.core import imagenet_stats

from cskd_fastai.datasets import ImageDataset, ImageSplit, load_dataset
from cskd_fastai.models import create_paper_model
from cskd_fastai.recipe import Recipe
from cskd_fastai.pipeline import build_dls, stratified_split
from cskd_fastai.train import build_learner

CONFIGS = {  # name: (paper model, image size, anchors per batch, augmentation of the real-image pipeline)
    "cifar": ("cifar_resnet18", 32, 128, "crop_flip"),
    "r18b32": ("resnet18", 224, 32, "resized_crop_flip"),
    "r18b64": ("resnet18", 224, 64, "resized_crop_flip"),
}
QUICK = {  # CPU smoke sizes: same models, tiny images and batches (minutes on 2 cores, not hours)
    "cifar": ("cifar_resnet18", 16, 8, "crop_flip"),
    "r18b32": ("resnet18", 32, 4, "resized_crop_flip"),
    "r18b64": ("resnet18", 32, 8, "resized_crop_flip"),
}
LAM, TEMP, LR = 1.0, 4.0, 0.01


# ---- timing -------------------------------------------------------------------------------------------
def _sync(device: torch.device):
    if device.type == "cuda": torch.cuda.synchronize(device)


class EpochTimer(Callback):
    "Wall time of the training phase (synchronised on CUDA); validation is skipped altogether."
    order = -1000
    def __init__(self): self.times = []
    def before_train(self): _sync(self.dls.device); self.t0 = time.perf_counter()
    def after_train(self): _sync(self.dls.device); self.times.append(time.perf_counter() - self.t0)
    def before_validate(self): raise CancelValidException()


class _Peak:
    "Peak allocated CUDA memory (GiB) of the code inside the block; NaN on CPU."
    def __init__(self, device): self.device, self.gib = device, float("nan")
    def __enter__(self):
        if self.device.type == "cuda": torch.cuda.synchronize(self.device); torch.cuda.reset_peak_memory_stats(self.device)
        return self
    def __exit__(self, *exc):
        if self.device.type == "cuda": self.gib = torch.cuda.max_memory_allocated(self.device) / 2 ** 30


# ---- data ---------------------------------------------------------------------------------------------
from overhead import _Pick, _PickImage  # noqa: E402  (same folder: the in-memory item transforms)


def synthetic_data(n: int, n_classes: int, size: int, seed: int = 0):
    "uint8 NCHW images (class-dependent mean + noise, so a model can learn them) and integer labels."
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % n_classes
    base = torch.randint(40, 216, (n_classes, 3, 1, 1), generator=g).float()
    x = (base[labels] + 30 * torch.randn(n, 3, size, size, generator=g)).clamp(0, 255).to(torch.uint8)
    return x, labels


def synthetic_dls(x, labels, n_valid: int, bs: int, paired: bool, device):
    "fastai DataLoaders over in-memory uint8 tensors; normalisation on the device, as in the training pipeline."
    from cskd_fastai.loaders import PairedDL
    names = [f"c{int(l)}" for l in labels]
    n = len(labels)
    splits = [list(range(n - n_valid)), list(range(n - n_valid, n))]
    dsets = Datasets(list(range(n)), tfms=[[_PickImage(x)], [_Pick(names), Categorize()]], splits=splits)
    return dsets.dataloaders(bs=bs, dl_type=PairedDL if paired else None, num_workers=0, device=device,
                             after_batch=[IntToFloatTensor(), Normalize.from_stats(*imagenet_stats)])


def limit_dataset(data: ImageDataset, n_classes: int | None, per_class: int | None, seed: int = 0) -> ImageDataset:
    "The first `n_classes` classes, at most `per_class` training images each (seeded); test split filtered alike."
    keep_c = n_classes or len(data.classes)
    rng = np.random.default_rng(seed)
    tr = [(i, l) for i, l in zip(data.train.items, data.train.labels) if l < keep_c]
    if per_class:
        by: dict = {}
        for it, l in tr: by.setdefault(l, []).append(it)
        tr = [(by[l][k], l) for l in sorted(by) for k in sorted(rng.permutation(len(by[l]))[:per_class].tolist())]
    te = [(i, l) for i, l in zip(data.test.items, data.test.labels) if l < keep_c]
    return ImageDataset(data.name, list(data.classes[:keep_c]), ImageSplit([i for i, _ in tr], [l for _, l in tr]),
                        ImageSplit([i for i, _ in te], [l for _, l in te]))


def _recipe(arch: str, size: int, bs: int, augment: str, method: str, args) -> Recipe:
    "The recipe `train.build_dls` / `train.build_learner` get: what `cskd-fastai train` would build."
    return Recipe.model_validate(dict(
        name="bench", dataset=dict(name="imagefolder", image_size=size, valid_pct=args.valid_pct), model=dict(arch=arch),
        methods=[dict(name=method, lam=LAM, temp=TEMP) if method.startswith("cskd") else dict(name=method)],
        train=dict(epochs=1, bs=bs, lr=LR, optimizer="sgd", momentum=0.9, wd=1e-4, schedule="constant",
                   augment=augment, mixed_precision=args.mixed_precision, channels_last=args.channels_last,
                   compile=args.compile, gpu_augment=args.gpu_augment, workers=args.workers,
                   cache="memory" if getattr(args, "cache", False) else "none")))


# ---- the plain-PyTorch reference ----------------------------------------------------------------------
class PairSampler:
    "Each epoch: shuffled anchors in chunks of `bs`, each followed by one random *other* item of its class."
    def __init__(self, labels, bs: int, seed: int = 0):
        self.labels, self.bs = np.asarray(labels), bs
        self.by_class = {c: np.flatnonzero(self.labels == c) for c in np.unique(self.labels)}
        self.rng = np.random.default_rng(seed)

    def partner(self, i: int) -> int:
        pool = self.by_class[self.labels[i]]
        if len(pool) == 1: return i
        j = i
        while j == i: j = int(pool[self.rng.integers(len(pool))])
        return j

    def __iter__(self):
        order = self.rng.permutation(len(self.labels))
        for s in range(0, len(order), self.bs):
            a = order[s:s + self.bs].tolist()
            if len(a) < 2: continue
            yield a + [self.partner(i) for i in a]

    def __len__(self): return math.ceil(len(self.labels) / self.bs)


class ImageFiles(torch.utils.data.Dataset):
    "Image files -> augmented, normalised float tensors (torchvision), for the reference loop on real images."
    def __init__(self, items, labels, size: int, augment: str):
        import torchvision.transforms as T
        aug = ([T.RandomResizedCrop(size), T.RandomHorizontalFlip()] if augment == "resized_crop_flip" else
               [T.Resize((size, size)), T.RandomCrop(size, padding=max(1, size // 8)), T.RandomHorizontalFlip()])
        self.items, self.labels = items, labels
        self.tfm = T.Compose(aug + [T.ToTensor(), T.Normalize(*imagenet_stats)])

    def __len__(self): return len(self.items)

    def __getitem__(self, i):
        from PIL import Image
        with Image.open(self.items[i]) as im: img = im.convert("RGB")
        return self.tfm(img), self.labels[i]


class Reference:
    "CS-KD as a plain fp32 PyTorch loop: anchors forward with grad, partners under no_grad, CE + λT²KL, SGD step."
    def __init__(self, model, device, batches_fn):
        self.model, self.device, self.batches_fn = model.to(device), device, batches_fn
        self.opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=1e-4)
        self.times = []

    def epoch(self):
        self.model.train()
        _sync(self.device); t0 = time.perf_counter()
        for x, y in self.batches_fn():
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            b = len(y) // 2
            out = self.model(x[:b])
            with torch.no_grad(): out_p = self.model(x[b:])
            kd = F.kl_div(F.log_softmax(out / TEMP, 1), F.softmax(out_p / TEMP, 1), reduction="batchmean") * TEMP ** 2
            loss = F.cross_entropy(out, y[:b]) + LAM * kd
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        _sync(self.device)
        self.times.append(time.perf_counter() - t0)


def synthetic_batches(x, labels, bs, device):
    "Reference batches from the in-memory tensors: index, move, normalise on the device (as the fastai loader)."
    sampler = PairSampler(labels.numpy(), bs)
    mean = torch.tensor(imagenet_stats[0], device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(imagenet_stats[1], device=device).view(1, 3, 1, 1) * 255
    pin = device.type == "cuda"
    xs = x.pin_memory() if pin else x
    def gen():
        for idx in sampler:
            i = torch.as_tensor(idx)
            xb = xs[i].to(device, non_blocking=True).float().sub_(mean).div_(std)
            yield xb, labels[i]
    return gen


def file_batches(items, labels, size, augment, bs, workers, device):
    ds = ImageFiles(items, labels, size, augment)
    sampler = PairSampler(labels, bs)
    dl = torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=workers,
                                     pin_memory=device.type == "cuda" and workers > 0,
                                     persistent_workers=False)   # as the official code (fastai: see speed.py)
    return lambda: iter(dl)


# ---- one configuration --------------------------------------------------------------------------------
def bench_one(name, arch, size, bs, augment, source, args, device, real_data=None):
    set_seed(0)
    n_classes = args.n_classes
    if source == "synthetic":
        n = args.n_images + args.n_classes
        x, labels = synthetic_data(n, n_classes, size)
        dls_ce = synthetic_dls(x, labels, args.n_classes, bs, False, device)
        dls_kd = synthetic_dls(x, labels, args.n_classes, bs, True, device)
        tr_labels = labels[:args.n_images]
        ref_batches = synthetic_batches(x[:args.n_images], tr_labels, bs, device)
        n_anchor = args.n_images
    else:
        data = real_data
        n_classes = len(data.classes)
        r_ce, r_kd = (_recipe(arch, size, bs, augment, m, args) for m in ("ce", "cskd"))
        cache = None
        if getattr(args, "cache", False):   # train.cache: memory (decoded once; not timed, as `train` builds it once)
            from cskd_fastai.cache import build_cache, cache_side
            cache = build_cache(list(data.train.items) + list(data.test.items), cache_side(size, augment),
                                "rrc" if augment == "resized_crop_flip" else "resize", "memory", log=lambda m: None)
        dls_ce = build_dls(data, r_ce.dataset, r_ce.train, 0, paired=False, device=device, cache=cache)
        dls_kd = build_dls(data, r_kd.dataset, r_kd.train, 0, paired=True, device=device, cache=cache)
        tr_idx, _ = stratified_split(data.train.labels, args.valid_pct, 0)
        items = [data.train.items[i] for i in tr_idx]; lab = [int(data.train.labels[i]) for i in tr_idx]
        ref_batches = file_batches(items, lab, size, augment, bs, args.workers, device)
        n_anchor = len(tr_idx)
    learners = {}
    for m, dls in (("ce", dls_ce), ("cskd", dls_kd), ("stored", dls_ce)):   # StoredCSKD indexes CE's loader per fit
        learn = build_learner(_recipe(arch, size, bs, augment, "cskd_stored" if m == "stored" else m, args), dls, Path("."))
        learn.remove_cb(ProgressCallback)
        timer = EpochTimer(); learn.add_cb(timer)
        learners[m] = (learn, timer)
    learners["ce"][0].model.to(device)
    init = {k: v.detach().clone() for k, v in learners["ce"][0].model.state_dict().items()}
    ref_model = create_paper_model(arch, n_classes)
    ref_model.load_state_dict(init)
    ref = Reference(ref_model, device, ref_batches)
    peaks = {"ce": [], "cskd": [], "stored": [], "ref": []}

    def run(which):
        with _Peak(device) as pk:
            if which == "ref":
                ref.epoch()
            else:
                learn, _ = learners[which]
                learn.model.load_state_dict(init)   # same start for every round of every trainer
                with learn.no_logging(): learn.fit(1, LR, reset_opt=True)
        peaks[which].append(pk.gib)

    order = ("ce", "cskd", "stored", "ref")
    for w in order: run(w)                                          # warm-up: allocator, kernel selection, compile
    for w in learners: learners[w][1].times.clear()
    ref.times.clear()
    for r in range(args.rounds):
        for w in order: run(w)
        print(f"  {name}/{source} round {r + 1}: CE {learners['ce'][1].times[-1]:.3f} s, "
              f"CS-KD {learners['cskd'][1].times[-1]:.3f} s, stored {learners['stored'][1].times[-1]:.3f} s, "
              f"ref {ref.times[-1]:.3f} s", file=sys.stderr, flush=True)
    med = statistics.median
    t = dict(**{w: med(learners[w][1].times) for w in learners}, ref=med(ref.times))
    kd_over_ce = med(k / c for k, c in zip(learners["cskd"][1].times, learners["ce"][1].times))
    stored_over_ce = med(k / c for k, c in zip(learners["stored"][1].times, learners["ce"][1].times))
    kd_vs_ref = med(r / k for k, r in zip(learners["cskd"][1].times, ref.times))
    mem = {k: max(v[1:] or v) for k, v in peaks.items()}
    return dict(config=name, source=source, arch=arch, size=size, bs=bs, n_anchor=n_anchor,
                batches=len(learners["cskd"][0].dls.train), t=t, ips={k: n_anchor / v for k, v in t.items()},
                kd_over_ce=kd_over_ce, stored_over_ce=stored_over_ce, kd_vs_ref=kd_vs_ref, mem=mem)


def print_table(rows, device):
    cuda = device.type == "cuda"
    print()
    print("| config | data | model | px | B | anchors/epoch | CE s/epoch | CS-KD s/epoch | ref s/epoch | "
          "CE anchor img/s | CS-KD anchor img/s | ref anchor img/s | CS-KD/CE time | stored/CE time | CS-KD/ref img/s |"
          + (" peak GiB CE / CS-KD / stored / ref |" if cuda else ""))
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if cuda else ""))
    for o in rows:
        t, ips, m = o["t"], o["ips"], o["mem"]
        print(f"| {o['config']} | {o['source']} | {o['arch']} | {o['size']} | {o['bs']} | {o['n_anchor']} | "
              f"{t['ce']:.3f} | {t['cskd']:.3f} | {t['ref']:.3f} | {ips['ce']:.1f} | {ips['cskd']:.1f} | "
              f"{ips['ref']:.1f} | {o['kd_over_ce']:.2f} | {o['stored_over_ce']:.2f} | {o['kd_vs_ref']:.2f} |"
              + (f" {m['ce']:.2f} / {m['cskd']:.2f} / {m['stored']:.2f} / {m['ref']:.2f} |" if cuda else ""))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes and few steps (CPU smoke run)")
    p.add_argument("--configs", default="cifar,r18b32,r18b64", help="comma-separated subset of " + ",".join(CONFIGS))
    p.add_argument("--sources", default=None, help="synthetic,real (default: synthetic, plus real with --data)")
    p.add_argument("--data", default=None, help="real-image dataset root, e.g. /work/shared/datasets/cub100/CUB_200_2011")
    p.add_argument("--dataset", default="cub", help="loader name for --data (cskd_fastai.datasets)")
    p.add_argument("--max-classes", type=int, default=None, help="real data: keep the first N classes")
    p.add_argument("--per-class", type=int, default=None, help="real data: at most N training images per class")
    p.add_argument("--n-images", type=int, default=None, help="synthetic training images (anchors per epoch)")
    p.add_argument("--n-classes", type=int, default=100, help="synthetic classes (the paper models' 100)")
    p.add_argument("--valid-pct", type=float, default=0.1)
    p.add_argument("--rounds", type=int, default=None, help="timed rounds after one warm-up round")
    p.add_argument("--workers", type=int, default=None, help="loader worker processes for real images")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    # speed options of the fastai trainers (the reference stays plain fp32)
    p.add_argument("--mixed-precision", choices=("none", "bf16", "fp16"), default="none")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--gpu-augment", action="store_true", help="real data: flips/crops per batch on the device")
    p.add_argument("--cache", action="store_true", help="real data: train.cache=memory (images decoded once)")
    a = p.parse_args(argv)
    if a.quick:
        a.n_images = a.n_images or 16
        a.n_classes = 4 if a.n_classes == 100 else a.n_classes
        a.rounds = a.rounds or 1
        a.max_classes = a.max_classes or 4
        a.per_class = a.per_class or 5
        a.valid_pct = 0.2
    a.n_images = a.n_images or 2048
    a.rounds = a.rounds or 3
    a.workers = (0 if a.quick else min(8, os.cpu_count() or 1)) if a.workers is None else a.workers
    return a


def main(argv=None):
    args = parse_args(argv)
    if args.threads: torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    if device.type == "cuda": torch.cuda.set_device(device); torch.backends.cudnn.benchmark = True
    sources = (args.sources.split(",") if args.sources else ["synthetic"] + (["real"] if args.data else []))
    if "real" in sources and not args.data: raise SystemExit("--sources real needs --data ROOT")
    table = QUICK if args.quick else CONFIGS
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    bad = [c for c in names if c not in table]
    if bad: raise SystemExit(f"unknown --configs {bad}; choose from {list(table)}")
    real = None
    if "real" in sources:
        real = limit_dataset(load_dataset(args.dataset, args.data), args.max_classes, args.per_class)
    load0 = os.getloadavg()[0]
    print(f"# CS-KD throughput: device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else f" ({platform.processor() or platform.machine()}, "
             f"{torch.get_num_threads()} threads, {os.cpu_count()} cores)")
          + f"; {'quick' if args.quick else 'full'}; rounds {args.rounds}; synthetic {args.n_images} images / "
          f"{args.n_classes} classes" + (f"; real {args.dataset}: {len(real.train)} train images, {len(real.classes)} classes, "
                                       f"{args.workers} workers" if real else "")
          + f"; fastai options: mixed_precision={args.mixed_precision} channels_last={args.channels_last} "
          f"compile={args.compile} gpu_augment={args.gpu_augment} cache={args.cache}", flush=True)
    rows = []
    for name in names:
        arch, size, bs, augment = table[name]
        for src in sources:
            rows.append(bench_one(name, arch, size, bs, augment, src, args, device, real))
    print_table(rows, device)
    print()
    print("CS-KD/CE time: CS-KD epoch time / CE epoch time at equal anchors (floor ~1.33: one extra no-grad forward); "
          "stored/CE likewise for cskd_stored (no partner pass: ~1). "
          "CS-KD/ref img/s: CS-KD anchor images/s / reference anchor images/s (>= 1: not slower than the plain loop).")
    print(f"torch {torch.__version__}, fastai {fastai.__version__}, python {platform.python_version()}; "
          f"load average before/after: {load0:.2f}/{os.getloadavg()[0]:.2f}")
    return rows


if __name__ == "__main__":
    main()
