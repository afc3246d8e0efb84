"""gpfm.heads: the heads that measure a foundation model on frozen features.

model = make_mil("abmil", in_dim=1024, n_classes=2)   # protocol="gpfm": the paper's att_mil
out = model(features, mask)                          # logits (B, C), attention (B, N)
result = train_mil(model, train, val, test, TrainConfig(task="classification"))
probe = fit_linear_probe(x_train, y_train, x_val, y_val)   # chosen on validation only
retrieval_scores(queries, labels, database, labels)        # protocol="gpfm": the paper's Acc@k

The top level holds the names most users call; the rest live in submodules:
``gpfm.heads.mil`` (and ``.mil_gpfm``), ``.data``, ``.training`` (and ``.train_config``),
``.survival``, ``.concordance``, ``.probes`` (and ``.probes_gpfm``), ``.retrieval``,
``.metrics``, ``.splits``, ``.heatmap``, ``.features``. Names that used to be at the top
level still import from here.
"""

from __future__ import annotations

import importlib
from typing import Any

from gpfm.heads.concordance import c_index
from gpfm.heads.data import FeatureBagDataset
from gpfm.heads.errors import FeatureFileError, HeadsError, InvalidInputError
from gpfm.heads.features import FeatureFile, read_bag, read_features, write_features
from gpfm.heads.heatmap import attention_to_heatmap, write_heatmap_png
from gpfm.heads.metrics import balanced_accuracy, bootstrap_ci, classification_metrics
from gpfm.heads.mil import ABMIL, MILOutput, make_mil
from gpfm.heads.probes import fit_knn_probe, fit_linear_probe
from gpfm.heads.protocol import EvalProtocol
from gpfm.heads.retrieval import retrieval_scores
from gpfm.heads.splits import validation_split
from gpfm.heads.training import TrainConfig, TrainResult, predict, train_mil

# Former top-level names, importable from here as before (new code imports the submodule).
_MOVED = {
    "censoring_survival": "concordance",
    "ipcw_c_index": "concordance",
    "balanced_sampler": "data",
    "collate_bags": "data",
    "feature_paths": "data",
    "heatmap_to_rgba": "heatmap",
    "BootstrapResult": "metrics",
    "accuracy": "metrics",
    "macro_auc": "metrics",
    "macro_f1": "metrics",
    "CLAM_SB": "mil",
    "DSMIL": "mil",
    "MIL_MODELS": "mil",
    "MaxMIL": "mil",
    "MeanMIL": "mil",
    "TransMIL": "mil",
    "FewShotResult": "probes",
    "KNNProbe": "probes",
    "LinearProbe": "probes",
    "simpleshot": "probes",
    "nearest_neighbours": "retrieval",
    "cox_loss": "survival",
    "discretize_time": "survival",
    "nll_survival_loss": "survival",
    "risk_score": "survival",
    "survival_curve": "survival",
    "time_bins": "survival",
    "Predictions": "training",
}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        return getattr(importlib.import_module(f"gpfm.heads.{_MOVED[name]}"), name)
    raise AttributeError(f"module 'gpfm.heads' has no attribute {name!r}")


__all__ = [
    "ABMIL",
    "EvalProtocol",
    "FeatureBagDataset",
    "FeatureFile",
    "FeatureFileError",
    "HeadsError",
    "InvalidInputError",
    "MILOutput",
    "TrainConfig",
    "TrainResult",
    "attention_to_heatmap",
    "balanced_accuracy",
    "bootstrap_ci",
    "c_index",
    "classification_metrics",
    "fit_knn_probe",
    "fit_linear_probe",
    "make_mil",
    "predict",
    "read_bag",
    "read_features",
    "retrieval_scores",
    "train_mil",
    "validation_split",
    "write_features",
    "write_heatmap_png",
]
