"Classification, calibration and selective-prediction metrics: a functional core plus streaming fastai wrappers (torchmetrics style)."
from .fastai_metrics import AUGRC, AURC, ECE, NLL, AdaptiveECE, Brier, ClasswiseECE, TopKError, TopLabelCalibrationError, cskd_metrics
from .functional import (adaptive_calibration_error, classwise_calibration_error, brier_score, calibration_bin_boundaries, calibration_bins, calibration_error,
                         calibration_error_from_confidences, classification_metrics, nll, top_k_error,
                         top_label_confidences)

__all__ = ["AURC", "AUGRC", "ECE", "AdaptiveECE", "ClasswiseECE", "NLL", "Brier", "TopKError", "TopLabelCalibrationError", "cskd_metrics", "brier_score",
           "calibration_bin_boundaries", "calibration_bins", "calibration_error", "adaptive_calibration_error",
           "classwise_calibration_error",
           "calibration_error_from_confidences", "classification_metrics", "nll", "top_k_error",
           "top_label_confidences"]
