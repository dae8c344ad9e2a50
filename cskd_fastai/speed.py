"""Single-device speed options of a built learner (`train:` keys): channels_last and torch.compile (augmentation on
the device is `batch_transforms`, loader workers `pipeline`).

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

from typing import Callable

import torch
from fastai.callback.core import Callback
from torch import nn

from .callbacks.cskd import CSKD

__all__ = ["ChannelsLast", "channels_last", "compile_model", "is_compiled", "apply_speed_options"]


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
