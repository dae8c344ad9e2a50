"""The CS-KD forms as *partner source x KD term*, in one registry that the callbacks, `cskd_learner(variant=...)`,
the recipe configs and the docs all read (a leaf: no torch, no fastai).

Partner sources (where partner i's logits come from; partner i is always a uniform draw among the other training
images of anchor i's class):
* `pass`     -- a separate no-grad forward of the partner images, same network in train mode (the paper's);
* `in_batch` -- anchors and partners in one forward, CE on both and the KD term both ways, targets detached;
* `store`    -- the logits the network gave the partner the last time it was an anchor (a per-sample store, as
                PS-KD keeps; no partner forward at all: CE's cost per epoch).
KD terms (per anchor, `losses.class_kd.KD_TERMS`, one signature `(anchor, partner, labels, temp) -> per-sample`):
* `plain`     -- T²·KL(softmax(partner/T) ‖ softmax(anchor/T)), the paper's;
* `gated`     -- the plain term times the partner's informativeness 1 - H(partner at T)/log C;
* `decoupled` -- T²·(w_t·TCKD + w_n·NCKD), DKD's split of the same KL (Zhao et al., CVPR 2022).
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Variant", "VARIANTS", "PARTNER_SOURCES", "KD_TERM_NAMES", "variant"]

PARTNER_SOURCES = ("pass", "in_batch", "store")
KD_TERM_NAMES = ("plain", "gated", "decoupled")


@dataclass(frozen=True)
class Variant:
    name: str
    partners: str       # one of PARTNER_SOURCES
    term: str           # one of KD_TERM_NAMES
    cost: str           # per epoch, against CE's
    summary: str


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("published", "pass", "plain", "~1.4x CE (a second, no-grad forward)",
            "the paper's loss (Yun et al., CVPR 2020)"),
    Variant("gated", "pass", "gated", "~1.4x CE", "each anchor's term weighted by its partner's informativeness"),
    Variant("decoupled", "pass", "decoupled", "~1.4x CE",
            "only the non-target part of the KL by default (tckd_weight 0): no confidence penalty from unfit partners"),
    Variant("in_batch", "in_batch", "plain", "~2x CE (anchors and partners both trained)",
            "one forward over anchors and partners, CE on both, the term both ways"),
    Variant("stored", "store", "gated", "~1.0x CE (no partner forward)",
            "partners' logits from a per-sample store of their last prediction, gated (gated: false for plain)"),
)}


def variant(name: str) -> Variant:
    "The registered variant `name`; one `ValueError` line listing the valid names otherwise."
    if name not in VARIANTS: raise ValueError(f"variant must be one of {tuple(VARIANTS)}, got {name!r}")
    return VARIANTS[name]
