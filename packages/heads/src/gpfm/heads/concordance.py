"""Concordance indices of survival predictions: Harrell's and the IPCW (Uno) c-index.

A pair (i, j) is comparable when i had the event and j is known to have survived longer:
t_i < t_j, or t_i == t_j with j censored. It is concordant when i's risk is higher. Risks equal
to within ``tied_tol`` count one half. These are the definitions of scikit-survival's
``concordance_index_censored`` and ``concordance_index_ipcw``, whose values ours equal.
"""

from __future__ import annotations

import numpy as np

from gpfm.heads.errors import InvalidInputError

# Comparable-pair matrices are built for this many (event, patient) pairs at a time.
_PAIRS_PER_CHUNK = 4_000_000


def _check(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> tuple[np.ndarray, ...]:
    time = np.asarray(time, dtype=np.float64).reshape(-1)
    event = np.asarray(event).reshape(-1)
    risk = np.asarray(risk, dtype=np.float64).reshape(-1)
    if not (len(time) == len(event) == len(risk)):
        raise InvalidInputError(
            f"time, event and risk must have one length, got {len(time)}, {len(event)}, {len(risk)}"
        )
    if not np.isfinite(time).all():
        raise InvalidInputError("time has NaN or infinite values")
    if not np.isfinite(risk).all():
        raise InvalidInputError(
            "risk has NaN or infinite values; check the model's predictions (a diverged run?)"
        )
    if not np.isin(event, (0, 1)).all():
        raise InvalidInputError("event must be 0 (censored) or 1 (event observed)")
    return time, event.astype(bool), risk


def _weighted_concordance(
    time: np.ndarray,
    event: np.ndarray,
    risk: np.ndarray,
    weights: np.ndarray,
    tied_tol: float,
) -> float:
    """Σ_i w_i (concordant_i + ½ tied_i) / Σ_i w_i comparable_i over events i."""
    numerator = denominator = 0.0
    events = np.flatnonzero(event)
    chunk = max(1, _PAIRS_PER_CHUNK // max(len(time), 1))
    for start in range(0, len(events), chunk):
        rows = events[start : start + chunk]
        t_i, r_i, w_i = time[rows, None], risk[rows, None], weights[rows]
        comparable = (time[None, :] > t_i) | ((time[None, :] == t_i) & ~event[None, :])
        tied = np.abs(risk[None, :] - r_i) <= tied_tol
        concordant = (risk[None, :] < r_i) & ~tied
        numerator += float(
            w_i @ ((concordant & comparable).sum(1) + 0.5 * (tied & comparable).sum(1))
        )
        denominator += float(w_i @ comparable.sum(1))
    if denominator == 0:
        raise InvalidInputError(
            "no comparable pairs: the c-index needs at least one event followed by a longer "
            "follow-up (all censored, or a single patient?)"
        )
    return numerator / denominator


def c_index(
    time: np.ndarray, event: np.ndarray, risk: np.ndarray, *, tied_tol: float = 1e-8
) -> float:
    """Harrell's concordance index of risk scores.

    Args:
        time: (N,) follow-up times (any unit).
        event: (N,) 1 where the event was observed, 0 where censored.
        risk: (N,) predicted risk; higher means an earlier event expected.
        tied_tol: risks closer than this count as tied (one half).

    Returns:
        The fraction of comparable pairs ordered correctly, in [0, 1] (0.5 = chance).

    Raises:
        InvalidInputError: lengths differ, values are not finite, or no pair is comparable.
    """
    time, event, risk = _check(time, event, risk)
    return _weighted_concordance(time, event, risk, np.ones_like(time), tied_tol)


def censoring_survival(
    train_time: np.ndarray, train_event: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Kaplan–Meier estimate G of the censoring distribution P(C > t) from training data.

    Censoring is the "event" here; a patient whose event happened at t is no longer at risk of
    being censored at t.

    Returns:
        (times, G): the distinct training times ascending and G just after each, a right-
        continuous step function with G = 1 before the first time.
    """
    times, event = np.asarray(train_time, dtype=np.float64), np.asarray(train_event).astype(bool)
    unique, inverse = np.unique(times, return_inverse=True)
    events_at = np.bincount(inverse, weights=event, minlength=len(unique))
    total_at = np.bincount(inverse, minlength=len(unique)).astype(np.float64)
    at_risk = total_at[::-1].cumsum()[::-1] - events_at
    censored_at = total_at - events_at
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = np.where(at_risk > 0, 1.0 - censored_at / at_risk, 1.0)
    return unique, np.cumprod(factor)


def ipcw_c_index(
    train_time: np.ndarray,
    train_event: np.ndarray,
    time: np.ndarray,
    event: np.ndarray,
    risk: np.ndarray,
    *,
    tau: float | None = None,
    tied_tol: float = 1e-8,
) -> float:
    """Uno's c-index: Harrell's pairs weighted by inverse probability of censoring, 1 / G(t_i)².

    G is the Kaplan–Meier censoring survival estimated on the training patients, so the index
    does not depend on the test set's censoring pattern. Only events before ``tau`` are weighted
    (as comparable first members of a pair).

    Args:
        train_time, train_event: (M,) training follow-up times and event indicators.
        time, event, risk: (N,) test times, event indicators and predicted risks.
        tau: truncation time (same unit as ``time``); None uses every test event.
        tied_tol: risks closer than this count as tied.

    Raises:
        InvalidInputError: as ``c_index``; or a test event time lies past the last training
            time (where G is unknown) or where G is 0 — pass a ``tau`` below that time.
    """
    time, event, risk = _check(time, event, risk)
    train_time, train_event, _ = _check(train_time, train_event, np.zeros(len(train_time)))
    weighted = event & (time < tau) if tau is not None else event.copy()
    weights = np.zeros_like(time)
    if train_event.all():  # nobody censored: G = 1 where there is training data
        unique, survival = np.unique(train_time), np.ones(len(np.unique(train_time)))
    else:
        unique, survival = censoring_survival(train_time, train_event)
    at = time[weighted]
    past_end = at > unique[-1]
    if past_end.any() and survival[-1] > 0:
        raise InvalidInputError(
            f"test event times up to {at.max():g} lie past the last training time "
            f"{unique[-1]:g}, where the censoring distribution is unknown; pass tau <= "
            f"{unique[-1]:g}"
        )
    index = np.searchsorted(unique, at, side="right") - 1
    g = np.where(past_end, 0.0, np.where(index >= 0, survival[np.clip(index, 0, None)], 1.0))
    if (g == 0).any():
        raise InvalidInputError(
            "the censoring survival estimate is 0 at some test event times (everyone left at "
            "risk was censored); pass a smaller tau"
        )
    weights[weighted] = 1.0 / g**2
    return _weighted_concordance(time, event, risk, weights, tied_tol)


__all__ = ["c_index", "censoring_survival", "ipcw_c_index"]
