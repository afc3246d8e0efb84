"""Splits of a cohort into folds (training, validation, test rows), and sealed test labels.

Every fold has a validation part: the dataset's own, or one carved out of its training part
with whole patients (``gpfm.heads.validation_split``), so that nothing is ever chosen on test
data. The test labels of a fold travel sealed (``TestLabels``): the protocols open them once,
after every choice has been made and the test predictions exist.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from gpfm.bench.data import Cohort
from gpfm.bench.errors import BenchError
from gpfm.bench.spec import TaskSpec
from gpfm.heads import validation_split

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fold:
    """One train/validation/test partition of a cohort's rows.

    Attributes:
        name: e.g. ``fold 2`` or ``official``.
        seed: seeds the carving of validation, model initialisation and sampling.
        train, val, test: sorted int64 row indices.
        val_carved: the validation rows were carved out of the training rows.
    """

    name: str
    seed: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    val_carved: bool = False


def _strata(cohort: Cohort) -> np.ndarray:
    """What folds stratify on: the class, the event indicator, or nothing."""
    if "label" in cohort.targets:
        return cohort.targets["label"]
    if "event" in cohort.targets:
        return cohort.targets["event"]
    return np.zeros(len(cohort), dtype=np.int64)


def _carve(cohort: Cohort, rows: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    train, val = validation_split(
        _strata(cohort)[rows], cohort.patients[rows], fraction=fraction, seed=seed
    )
    return rows[train], rows[val]


def make_folds(spec: TaskSpec, cohort: Cohort) -> list[Fold]:
    """The folds of ``spec.split`` over ``cohort``: one per seed (official, ratio) or
    ``folds`` per seed (kfold); stratified by class (or event) and grouped by patient."""
    split = spec.split
    folds = []
    for seed in split.seeds:
        if split.kind == "official":
            if cohort.split is None:
                raise BenchError(f"{cohort.source}: an official split needs a `split` column")
            part = {name: np.flatnonzero(cohort.split == name) for name in ("train", "val", "test")}
            if len(part["train"]) == 0 or len(part["test"]) == 0:
                raise BenchError(
                    f"{cohort.source}: the official split needs train and test rows (it has "
                    f"{ {k: len(v) for k, v in part.items()} })"
                )
            carved = len(part["val"]) == 0
            if carved:
                part["train"], part["val"] = _carve(
                    cohort, part["train"], split.validation_fraction, seed
                )
            folds.append(Fold("official", seed, part["train"], part["val"], part["test"], carved))
        elif split.kind == "ratio":
            everything = np.arange(len(cohort))
            test_fraction = split.ratios[2]
            rest, test = _carve(cohort, everything, test_fraction, seed)
            val_fraction = split.ratios[1] / (split.ratios[0] + split.ratios[1])
            train, val = _carve(cohort, rest, min(0.5, val_fraction), seed)
            folds.append(Fold(f"seed {seed}", seed, train, val, test))
        else:
            splitter = StratifiedGroupKFold(n_splits=split.folds, shuffle=True, random_state=seed)
            strata = _strata(cohort)
            for index, (rest, test) in enumerate(
                splitter.split(np.zeros(len(cohort)), strata, cohort.patients)
            ):
                train, val = _carve(cohort, np.sort(rest), split.validation_fraction, seed)
                folds.append(Fold(f"fold {index}", seed, train, val, np.sort(test), True))
    for fold in folds:
        shared = set(cohort.patients[fold.test]) & set(cohort.patients[fold.train])
        shared |= set(cohort.patients[fold.test]) & set(cohort.patients[fold.val])
        if shared:
            logger.warning(
                "%s %s: patients %s are in both test and training/validation (the official "
                "split mixes them)",
                spec.name,
                fold.name,
                sorted(shared)[:5],
            )
    return folds


class TestLabels:
    """A fold's test targets, sealed until the final evaluation.

    ``open()`` hands them out and records that it did; protocols call it only after every
    choice (epoch, C, k) has been made and the test predictions exist. ``on_open`` hooks are
    called at each opening (the tests use them to prove the order of events).
    """

    __test__ = False  # not a pytest test class
    on_open: ClassVar[list[Callable[[str], None]]] = []

    def __init__(self, task: str, fold: str, targets: dict[str, np.ndarray]) -> None:
        self._task, self._fold, self._targets = task, fold, targets
        self.opened = False

    def open(self) -> dict[str, np.ndarray]:
        """The test targets (``label``, or ``time`` and ``event``), for the final evaluation."""
        self.opened = True
        for hook in TestLabels.on_open:
            hook(f"{self._task} {self._fold}")
        logger.debug("%s %s: test labels opened for the final evaluation", self._task, self._fold)
        return self._targets


def sealed_test_labels(spec: TaskSpec, cohort: Cohort, fold: Fold) -> TestLabels:
    """The test rows' targets of ``fold``, sealed."""
    return TestLabels(spec.name, fold.name, {k: v[fold.test] for k, v in cohort.targets.items()})


__all__ = ["Fold", "TestLabels", "make_folds", "sealed_test_labels"]
