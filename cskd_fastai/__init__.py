"""cskd-fastai: class-wise self-knowledge distillation (Yun et al., CVPR 2020) as a one-line fastai addition."""
__version__ = "0.1.0"

import warnings as _warnings

# fastai calls torch.jit.script at import time; torch 2.14 warns about it on every import (not our code's use)
_warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)

from .data import PairedDL, paired_dls, dataset_labels, check_classes
from .losses import class_wise_kd, ClassWiseKDLoss
from .callback import CSKD, warmup_schedule
from .learner import cskd_learner, plain_learner, CSKDLearner
from .metrics import cskd_metrics, classification_metrics

__all__ = ["PairedDL", "paired_dls", "dataset_labels", "check_classes", "class_wise_kd", "ClassWiseKDLoss",
           "CSKD", "warmup_schedule", "cskd_learner", "plain_learner", "CSKDLearner", "cskd_metrics",
           "classification_metrics", "__version__"]
