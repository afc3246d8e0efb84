"""gpfm.heads: the heads that measure a foundation model on frozen features.

model = ABMIL(in_dim=1024, n_classes=2)            # also TransMIL, CLAM_SB, DSMIL, MeanMIL, MaxMIL
out = model(features, mask)                        # logits (B, C), attention (B, N)
result = train_mil(model, train, val, test, TrainConfig(task="classification"))
c_index(time, event, risk)                         # Harrell's; ipcw_c_index for Uno's
probe = fit_linear_probe(x_train, y_train, x_val, y_val)   # C chosen on validation only
retrieval_scores(queries, labels, database, labels)        # acc@k, mvacc@k, map@k
"""

from gpfm.heads.concordance import c_index, censoring_survival, ipcw_c_index
from gpfm.heads.data import FeatureBagDataset, balanced_sampler, collate_bags, feature_paths
from gpfm.heads.errors import FeatureFileError, HeadsError, InvalidInputError
from gpfm.heads.features import FeatureFile, read_bag, read_features, write_features
from gpfm.heads.heatmap import attention_to_heatmap, heatmap_to_rgba, write_heatmap_png
from gpfm.heads.metrics import (
    BootstrapResult,
    accuracy,
    balanced_accuracy,
    bootstrap_ci,
    classification_metrics,
    macro_auc,
    macro_f1,
)
from gpfm.heads.mil import (
    ABMIL,
    CLAM_SB,
    DSMIL,
    MIL_MODELS,
    MaxMIL,
    MeanMIL,
    MILOutput,
    TransMIL,
    make_mil,
)
from gpfm.heads.probes import (
    FewShotResult,
    KNNProbe,
    LinearProbe,
    fit_knn_probe,
    fit_linear_probe,
    simpleshot,
)
from gpfm.heads.retrieval import nearest_neighbours, retrieval_scores
from gpfm.heads.survival import (
    cox_loss,
    discretize_time,
    nll_survival_loss,
    risk_score,
    survival_curve,
    time_bins,
)
from gpfm.heads.training import Predictions, TrainConfig, TrainResult, predict, train_mil

__all__ = [
    "ABMIL",
    "CLAM_SB",
    "DSMIL",
    "MIL_MODELS",
    "BootstrapResult",
    "FeatureBagDataset",
    "FeatureFile",
    "FeatureFileError",
    "FewShotResult",
    "HeadsError",
    "InvalidInputError",
    "KNNProbe",
    "LinearProbe",
    "MILOutput",
    "MaxMIL",
    "MeanMIL",
    "Predictions",
    "TrainConfig",
    "TrainResult",
    "TransMIL",
    "accuracy",
    "attention_to_heatmap",
    "balanced_accuracy",
    "balanced_sampler",
    "bootstrap_ci",
    "c_index",
    "censoring_survival",
    "classification_metrics",
    "collate_bags",
    "cox_loss",
    "discretize_time",
    "feature_paths",
    "fit_knn_probe",
    "fit_linear_probe",
    "heatmap_to_rgba",
    "ipcw_c_index",
    "macro_auc",
    "macro_f1",
    "make_mil",
    "nearest_neighbours",
    "nll_survival_loss",
    "predict",
    "read_bag",
    "read_features",
    "retrieval_scores",
    "risk_score",
    "simpleshot",
    "survival_curve",
    "time_bins",
    "train_mil",
    "write_features",
    "write_heatmap_png",
]
