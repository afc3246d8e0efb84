"""Carving a validation split out of a training split, whole patients at a time.

The GPFM paper's code selects on the test split when a dataset ships without a validation split
(``ROI_tasks/linear.py`` falls back to ``test = val``). Here a validation split always comes from
the training data instead, so that nothing is ever chosen on test data.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from gpfm.heads.errors import InvalidInputError


def validation_split(
    labels: Sequence[int] | np.ndarray,
    groups: Sequence[str] | np.ndarray | None = None,
    *,
    fraction: float = 0.2,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Split training rows into (train, validation) row indices, keeping each group whole.

    Rows of one group (e.g. one patient's slides or patches) land on one side; classes keep
    about their proportions (scikit-learn's ``StratifiedGroupKFold``, one fold of
    round(1 / ``fraction``) as validation).

    Args:
        labels: (N,) class of each training row.
        groups: (N,) patient (or slide) id of each row; None: every row is its own group.
        fraction: the share of groups to hold out, in (0, 0.5].
        seed: seed of the shuffling.

    Returns:
        (train_indices, validation_indices), sorted int64 arrays that partition 0..N-1.
    """
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) < 2:
        raise InvalidInputError(f"labels must be 1-D with at least 2 rows, got shape {y.shape}")
    if not 0 < fraction <= 0.5:
        raise InvalidInputError(f"fraction must be in (0, 0.5], got {fraction}")
    group_ids = np.arange(len(y)) if groups is None else np.asarray(groups)
    if group_ids.shape != y.shape:
        raise InvalidInputError(f"groups has shape {group_ids.shape}, labels {y.shape}")
    folds = max(2, round(1 / fraction))
    if len(np.unique(group_ids)) < folds:
        raise InvalidInputError(
            f"{len(np.unique(group_ids))} groups cannot give a {fraction:.0%} validation split"
        )
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    train, val = next(splitter.split(np.zeros(len(y)), y, group_ids))
    return np.sort(train).astype(np.int64), np.sort(val).astype(np.int64)


__all__ = ["validation_split"]
