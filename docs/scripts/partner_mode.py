"""Why does the published CS-KD lose in fine-tuning? Compare a trained run's predictions for the same training images
in train mode (how the published loss computes its partner targets: dropout on, BatchNorm on batch statistics) and in
eval mode (how the model predicts), at the KD temperature T.

    python docs/scripts/partner_mode.py docs/... RUN_DIR [--n 256] [--temp 4]

Prints, per mode: top-1 accuracy on those training images, the mean max-probability at T = 1, the mean entropy of
softmax(z/T) against log C, and KL(train-mode ‖ eval-mode) at T (what a partner target differs by from the
model's own prediction). The run directory needs model.safetensors and its data root (recipe.yaml)."""
import argparse
import copy
import math

import torch

from cskd_fastai.pipeline import load_data
from cskd_fastai.rebuild import rebuild_learner
from cskd_fastai.recipe import recipe_of_run
from cskd_fastai.rundir import load_run

ap = argparse.ArgumentParser()
ap.add_argument("run")
ap.add_argument("--n", type=int, default=256)
ap.add_argument("--temp", type=float, default=4.0)
ap.add_argument("--bs", type=int, default=32)
a = ap.parse_args()
torch.manual_seed(0)
run = load_run(a.run)
recipe = recipe_of_run(run.recipe, f"{a.run}/recipe.yaml")
data = load_data(recipe.dataset)
learn = rebuild_learner(a.run)
vocab = {str(c): i for i, c in enumerate(learn.dls.vocab)}
idx = torch.randperm(len(data.train.items))[: a.n].tolist()
items = [data.train.items[i] for i in idx]
y = torch.tensor([vocab[str(data.classes[data.train.labels[i]])] for i in idx])
dl = learn.dls.test_dl(items, bs=a.bs, num_workers=0)
model = copy.deepcopy(learn.model)   # train mode updates BatchNorm's running statistics: never on the run's model
drop = [m for m in model.modules() if isinstance(m, torch.nn.Dropout) and m.p > 0]
print(f"{a.run}: {len(items)} training images, T = {a.temp}; dropout layers {[m.p for m in drop]}")
out = {}
for mode in ("eval", "train", "train, dropout off"):
    model.load_state_dict(learn.model.state_dict())
    model.train(mode != "eval")
    if mode == "train, dropout off":
        for m in drop: m.eval()
    zs = []
    with torch.no_grad():
        for (xb,) in dl: zs.append(model(xb).float().as_subclass(torch.Tensor))
    out[mode] = torch.cat(zs)
C = out["eval"].shape[1]
print(f"| mode | top-1 acc | mean max prob (T=1) | entropy at T (log C = {math.log(C):.2f}) | KL(mode ‖ eval) at T |")
print("|---|---|---|---|---|")
for mode, z in out.items():
    p1, pT = z.softmax(1), (z / a.temp).softmax(1)
    ent = -(pT * pT.clamp_min(1e-12).log()).sum(1).mean()
    qT = (out["eval"] / a.temp).softmax(1)
    kl = (pT * (pT.clamp_min(1e-12).log() - qT.clamp_min(1e-12).log())).sum(1).mean()
    print(f"| {mode} | {(z.argmax(1) == y).float().mean():.3f} | {p1.amax(1).mean():.3f} | {ent:.3f} | {kl:.4f} |")
