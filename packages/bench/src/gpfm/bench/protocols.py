"""The protocols that measure one encoder on one task, through gpfm-heads.

- slide classification: a MIL head (ABMIL; ``protocol="gpfm"``: the paper's ``att_mil`` and
  training settings) trained with early stopping on validation; AUC, balanced accuracy,
  macro-F1 on the test split;
- survival: the same head with the discrete-time NLL over 4 time bins cut at quantiles of the
  training fold's event times, per patient (all of a patient's slides in one bag); c-index;
- ROI classification: a linear probe (ours: C chosen on validation; gpfm: the paper's
  ``nn.Linear``, its epoch chosen on validation), or a kNN probe (k chosen on validation);
  balanced accuracy, macro-F1 and macro-AUC with bootstrap intervals;
- ROI retrieval: the training set is the database and the test ROIs the queries; Acc@1/3/5,
  MVAcc@5 and mAP@5 (gpfm: the paper's Acc@k with its bootstrap);
- VQA and report generation: ``gpfm.bench.language``.

In every protocol the test split's features are used only once the head is final, and its
labels arrive sealed (``gpfm.bench.splits.TestLabels``) and are opened only after the test
predictions exist. ``head_seconds`` records the time spent in the heads' training/fitting,
``eval_seconds`` the time spent predicting and scoring.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from gpfm.bench.data import Cohort, read_roi_features, roi_feature_path, slide_feature_path
from gpfm.bench.errors import BenchError, SpecError
from gpfm.bench.language import language_unavailable, run_report_generation, run_vqa
from gpfm.bench.spec import TaskSpec
from gpfm.bench.splits import Fold, sealed_test_labels
from gpfm.heads import (
    EvalProtocol,
    FeatureBagDataset,
    HeadsError,
    TrainConfig,
    bootstrap_ci,
    c_index,
    fit_knn_probe,
    fit_linear_probe,
    make_mil,
    predict,
    read_bag,
    retrieval_scores,
    train_mil,
)
from gpfm.heads.features import bag_shape
from gpfm.heads.metrics import (
    BootstrapResult,
    balanced_accuracy,
    macro_auc,
    macro_f1,
    multiclass_accuracy,
    multiclass_auroc,
    multiclass_f1,
    poisson_bootstrap,
)
from gpfm.heads.training import resolve_mixed_precision

logger = logging.getLogger(__name__)


@dataclass
class ProtocolOutput:
    """What a protocol returns: one record per (fold, seed) and the test predictions.

    Attributes:
        runs: per fold and seed: ``fold``, ``seed``, ``metrics`` {name: value}, ``ci``
            {name: [low, high]} (bootstrap, where computed), ``selection`` (what was chosen on
            validation), ``sizes``, ``val_carved``, ``head_seconds``, ``eval_seconds``.
        predictions: per test unit and run: ``id``, ``fold``, ``seed``, the targets and the
            head's output (``probabilities`` or ``risk``).
    """

    runs: list[dict[str, Any]] = field(default_factory=list)
    predictions: list[dict[str, Any]] = field(default_factory=list)


class PatientBags(FeatureBagDataset):
    """Feature bags where one bag is one or more feature files read and stacked together
    (a patient's slides), for gpfm-heads' training loop."""

    def __init__(
        self,
        files: Sequence[Sequence[Path]],
        targets: dict[str, np.ndarray] | None,
        names: Sequence[str],
    ) -> None:
        self.patient_files = [tuple(f) for f in files]
        super().__init__([f[0] for f in self.patient_files], targets, names=names)

    @property
    def embed_dim(self) -> int:
        """D, read from the first file's header."""
        return bag_shape(self.patient_files[0][0])[1]

    def bag(self, index: int) -> torch.Tensor:
        """The (N, D) float32 features of all files of bag ``index``, stacked."""
        parts = [read_bag(path) for path in self.patient_files[index]]
        return torch.from_numpy(np.concatenate(parts) if len(parts) > 1 else parts[0])


def _heads_protocol(protocol: str) -> EvalProtocol:
    """gpfm-heads' name of a bench protocol: ``gpfm``, or ours (``ours`` and ``uni``)."""
    return "gpfm" if protocol == "gpfm" else "ours"


def _metric_fns(protocol: str, auc_name: str) -> dict[str, Callable[..., float]]:
    """AUC, balanced accuracy and macro-F1 of (labels, probabilities): scikit-learn's (ours) or
    torchmetrics 0.10.3's (gpfm: every class 0..C-1 in the macro means)."""
    if protocol == "gpfm":
        return {
            auc_name: lambda y, p: multiclass_auroc(y, p, num_classes=p.shape[1]),
            "balanced_accuracy": lambda y, p: multiclass_accuracy(y, p, num_classes=p.shape[1]),
            "macro_f1": lambda y, p: multiclass_f1(y, p, num_classes=p.shape[1]),
        }
    return {
        auc_name: macro_auc,
        "balanced_accuracy": lambda y, p: balanced_accuracy(y, p.argmax(axis=1)),
        "macro_f1": lambda y, p: macro_f1(y, p.argmax(axis=1)),
    }


def _wanted(spec: TaskSpec, metrics: dict[str, float]) -> dict[str, float]:
    """The metrics the spec asks for (with their bootstrap mean and std, where recorded)."""
    return {k: v for k, v in metrics.items() if k.split("_bootstrap")[0] in spec.metrics.names}


def _run_record(fold: Fold, **values: Any) -> dict[str, Any]:
    sizes = {"train": len(fold.train), "val": len(fold.val), "test": len(fold.test)}
    record = {"fold": fold.name, "seed": fold.seed, "sizes": sizes, "val_carved": fold.val_carved}
    return record | values


def _allow_precision(config: TrainConfig) -> None:
    """Let a run use another mixed precision than the previous run of this process.

    Accelerate keeps one precision per process, and the two protocols differ (ours: bf16 on a
    GPU; gpfm: full precision). In a single process the state is reset between such runs; under
    ``accelerate launch`` with several processes it cannot be, and an error says what to do.
    """
    from accelerate.state import AcceleratorState, PartialState

    if not AcceleratorState._shared_state:
        return
    cuda = torch.cuda.is_available() and not config.cpu
    wanted = resolve_mixed_precision(
        config.mixed_precision, cuda=cuda, bf16_supported=cuda and torch.cuda.is_bf16_supported()
    )
    if str(AcceleratorState().mixed_precision) == wanted:
        return
    if PartialState().num_processes > 1:
        raise BenchError(
            f"this run needs mixed_precision={wanted!r} but the processes were launched with "
            f"{AcceleratorState().mixed_precision!r}; set head.train.mixed_precision to one value "
            "for every task of the launch, or run each protocol in its own launch"
        )
    logger.info("mixed precision %s -> %s for this run", AcceleratorState().mixed_precision, wanted)
    AcceleratorState._reset_state(reset_partial_state=True)


def run_mil(
    spec: TaskSpec,
    cohort: Cohort,
    folds: Sequence[Fold],
    encoder: str,
    data_root: Path,
    protocol: str,
) -> ProtocolOutput:
    """Slide classification or survival with a MIL head (see the module docstring)."""
    survival = spec.type == "survival"
    heads_protocol = _heads_protocol(protocol)
    task: Literal["classification", "survival"] = "survival" if survival else "classification"
    files = [
        [slide_feature_path(data_root, encoder, s) for s in members] for members in cohort.members
    ]

    def bags(rows: np.ndarray, with_targets: bool) -> PatientBags:
        targets = {k: v[rows] for k, v in cohort.targets.items()} if with_targets else None
        return PatientBags([files[i] for i in rows], targets, [cohort.ids[i] for i in rows])

    output = ProtocolOutput()
    for fold in folds:
        settings = {"progress": False, **spec.head.train}
        config = TrainConfig(
            task=task,
            protocol=heads_protocol,
            seed=fold.seed,
            **settings,
        )
        n_outputs = config.n_bins if survival else len(cohort.classes)
        train, val = bags(fold.train, True), bags(fold.val, True)
        torch.manual_seed(fold.seed)
        model = make_mil(
            spec.head.name,
            train.embed_dim,
            n_outputs,
            protocol=heads_protocol,
            **spec.head.options,
        )
        _allow_precision(config)
        start = time.perf_counter()
        result = train_mil(model, train, val, None, config)
        head_seconds = time.perf_counter() - start
        start = time.perf_counter()
        predictions = predict(result.model, bags(fold.test, False), task=task)
        truth = sealed_test_labels(spec, cohort, fold).open()  # final evaluation from here on
        if survival:
            functions: dict[str, Callable[..., float]] = {"c_index": c_index}
            arrays: tuple[np.ndarray, ...] = (truth["time"], truth["event"], predictions.risk)
            outputs: dict[str, list[Any]] = {"risk": predictions.risk.tolist()}
        else:
            functions = _metric_fns(protocol, "auc")
            arrays = (truth["label"], predictions.probabilities)
            outputs = {"probabilities": predictions.probabilities.round(6).tolist()}
        selection: dict[str, Any] = {
            "best_epoch": result.best_epoch,
            "epochs_run": len(result.history),
            "settings": asdict(config),  # the protocol's training settings, resolved
        }
        if result.time_bins is not None:
            selection["time_bins"] = result.time_bins.tolist()
        evaluation = _Evaluation(truth, functions, arrays, cohort.patients[fold.test], outputs)
        _score_and_record(
            output, spec, protocol, cohort, fold, evaluation, selection, head_seconds, start
        )
    return output


@dataclass
class _Evaluation:
    """A fold's final evaluation: the opened test targets, the metric functions, the arrays
    they take, the patients of the test rows (for the bootstrap) and the head's outputs."""

    truth: dict[str, np.ndarray]
    functions: dict[str, Callable[..., float]]
    arrays: tuple[np.ndarray, ...]
    groups: np.ndarray | None
    outputs: dict[str, list[Any]]


def _score_and_record(
    output: ProtocolOutput,
    spec: TaskSpec,
    protocol: str,
    cohort: Cohort,
    fold: Fold,
    evaluation: _Evaluation,
    selection: dict[str, Any],
    head_seconds: float,
    started: float,
) -> None:
    """Score the test predictions (with bootstrap intervals) and record the run."""
    metrics = {name: fn(*evaluation.arrays) for name, fn in evaluation.functions.items()}
    boots = _bootstrap(
        spec, protocol, evaluation.functions, evaluation.arrays, evaluation.groups, fold.seed
    )
    ci = _intervals(protocol, metrics, boots)
    output.runs.append(
        _run_record(
            fold,
            metrics=_wanted(spec, metrics),
            ci=ci,
            selection=selection,
            head_seconds=head_seconds,
            eval_seconds=time.perf_counter() - started,
        )
    )
    _add_predictions(output, cohort, fold, evaluation.truth, evaluation.outputs)


def _add_predictions(
    output: ProtocolOutput,
    cohort: Cohort,
    fold: Fold,
    truth: dict[str, np.ndarray],
    outputs: dict[str, list[Any]],
) -> None:
    for position, row in enumerate(fold.test):
        record: dict[str, Any] = {"id": cohort.ids[row], "fold": fold.name, "seed": fold.seed}
        record |= {k: v[position].item() for k, v in truth.items()}
        record |= {k: v[position] for k, v in outputs.items()}
        output.predictions.append(record)


def _fit_roi_probe(
    spec: TaskSpec, protocol: str, x: np.ndarray, y: np.ndarray, fold: Fold
) -> tuple[Any, dict[str, Any]]:
    options = dict(spec.head.options)
    train, val = (x[fold.train], y[fold.train]), (x[fold.val], y[fold.val])
    if spec.head.name == "linear":
        if protocol == "gpfm":
            options.setdefault("seed", fold.seed)
            torch_probe = fit_linear_probe(*train, *val, protocol="gpfm", **options)
            return torch_probe, {"epoch": torch_probe.best_epoch}
        probe = fit_linear_probe(*train, *val, protocol="ours", **options)
        return probe, {"C": probe.C}
    if spec.head.name == "knn":
        knn = fit_knn_probe(
            x[fold.train],
            y[fold.train],
            x[fold.val],
            y[fold.val],
            protocol=_heads_protocol(protocol),
            **options,
        )
        return knn, {"k": knn.k}
    raise SpecError(
        f"{spec.path or spec.name}: `head.name` {spec.head.name!r} is not an ROI classification "
        "head; use 'linear' or 'knn'"
    )


@contextlib.contextmanager
def _quiet_resamples() -> Iterator[None]:
    """Silence the per-resample notes (a class missing from one resample) of a bootstrap."""
    metrics_logger = logging.getLogger("gpfm.heads.metrics")
    level = metrics_logger.level
    metrics_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        metrics_logger.setLevel(level)


def _bootstrap(
    spec: TaskSpec,
    protocol: str,
    functions: dict[str, Callable[..., float]],
    arrays: Sequence[np.ndarray],
    groups: np.ndarray | None,
    seed: int,
) -> dict[str, BootstrapResult]:
    """Bootstrap intervals of the spec's metrics among ``functions`` on the test ``arrays``:
    ours resamples whole patients (``groups``), gpfm rows with Poisson(1) weights."""
    functions = {k: v for k, v in functions.items() if k in spec.metrics.names}
    resamples, confidence = spec.metrics.bootstrap, spec.metrics.confidence
    if resamples < 2 or not functions:
        return {}
    if protocol == "gpfm":
        try:
            with _quiet_resamples():
                return poisson_bootstrap(
                    functions, *arrays, n_resamples=resamples, seed=seed, confidence=confidence
                )
        except HeadsError as error:
            logger.warning("%s: no bootstrap intervals (%s)", spec.name, error)
            return {}
    results = {}
    for name, fn in functions.items():
        try:
            with _quiet_resamples():
                results[name] = bootstrap_ci(
                    fn,
                    *arrays,
                    groups=groups,
                    n_resamples=resamples,
                    confidence=confidence,
                    seed=seed,
                )
        except HeadsError as error:  # e.g. too few patients for resamples with every class
            logger.warning("%s: no bootstrap interval of %s (%s)", spec.name, name, error)
    return results


def _intervals(
    protocol: str, metrics: dict[str, float], boots: dict[str, BootstrapResult]
) -> dict[str, list[float]]:
    """Percentile intervals per metric; gpfm also records the bootstrap mean and std it
    reports."""
    for name, boot in boots.items():
        if protocol == "gpfm":
            metrics[f"{name}_bootstrap_mean"] = boot.mean
            metrics[f"{name}_bootstrap_std"] = boot.std
    return {name: [boot.low, boot.high] for name, boot in boots.items()}


def run_roi_classification(
    spec: TaskSpec,
    cohort: Cohort,
    folds: Sequence[Fold],
    encoder: str,
    data_root: Path,
    protocol: str,
) -> ProtocolOutput:
    """ROI classification with a linear or kNN probe (see the module docstring)."""
    x = read_roi_features(roi_feature_path(data_root, encoder), cohort.ids)
    y = cohort.targets["label"]
    n_classes = len(cohort.classes)
    by_patient = bool(np.any(cohort.patients != np.asarray(cohort.ids)))
    output = ProtocolOutput()
    for fold in folds:
        start = time.perf_counter()
        probe, selection = _fit_roi_probe(spec, protocol, x, y, fold)
        head_seconds = time.perf_counter() - start
        start = time.perf_counter()
        probabilities = np.zeros((len(fold.test), n_classes))
        probabilities[:, np.asarray(probe.classes)] = probe.predict_proba(x[fold.test])
        truth = sealed_test_labels(spec, cohort, fold).open()  # final evaluation from here on
        groups = cohort.patients[fold.test] if by_patient else None
        evaluation = _Evaluation(
            truth,
            _metric_fns(protocol, "macro_auc"),
            (truth["label"], probabilities),
            groups,
            {"probabilities": probabilities.round(6).tolist()},
        )
        _score_and_record(
            output, spec, protocol, cohort, fold, evaluation, selection, head_seconds, start
        )
    return output


def run_roi_retrieval(
    spec: TaskSpec,
    cohort: Cohort,
    folds: Sequence[Fold],
    encoder: str,
    data_root: Path,
    protocol: str,
) -> ProtocolOutput:
    """ROI retrieval: test ROIs against the training set (training and any carved-out
    validation rows: nothing is chosen here, so the validation split is not needed)."""
    x = read_roi_features(roi_feature_path(data_root, encoder), cohort.ids)
    y = cohort.targets["label"]
    ks = sorted({int(name.split("@")[1]) for name in spec.metrics.names})
    output = ProtocolOutput()
    for fold in folds:
        database = (
            np.sort(np.concatenate([fold.train, fold.val])) if fold.val_carved else fold.train
        )
        start = time.perf_counter()
        truth = sealed_test_labels(spec, cohort, fold).open()  # no choice to make: evaluate
        scores = retrieval_scores(
            x[fold.test],
            truth["label"],
            x[database],
            y[database],
            ks=ks,
            protocol="gpfm" if protocol == "gpfm" else "uni",
            n_bootstrap=spec.metrics.bootstrap if spec.metrics.bootstrap >= 2 else 0,
            seed=fold.seed,
        )
        output.runs.append(
            _run_record(
                fold,
                metrics=_wanted(spec, scores),
                ci={},
                selection={"database": "training set", "database_size": len(database)},
                head_seconds=0.0,
                eval_seconds=time.perf_counter() - start,
            )
        )
    return output


RUNNERS: dict[str, Callable[..., ProtocolOutput]] = {
    "slide_classification": run_mil,
    "survival": run_mil,
    "roi_classification": run_roi_classification,
    "roi_retrieval": run_roi_retrieval,
}
RUNNERS["vqa"] = run_vqa
RUNNERS["report_generation"] = run_report_generation


def unavailable(spec: TaskSpec) -> str | None:
    """Why ``spec`` cannot run in this environment (None: it can), with what to install."""
    return language_unavailable(spec) if spec.type in ("vqa", "report_generation") else None


__all__ = [
    "RUNNERS",
    "PatientBags",
    "ProtocolOutput",
    "run_mil",
    "run_roi_classification",
    "run_roi_retrieval",
    "unavailable",
]
