"""Survival heads: discrete-time hazards with their negative log-likelihood, Cox partial
likelihood, and risk scores.

Discrete time: the follow-up is cut into K bins at quantiles of the *uncensored* times (as the
benchmark's GPFM/CLAM protocol does); a model outputs K hazard logits per patient, with
hazard h_k = sigmoid(logit_k) = P(event in bin k | no event before k) and survival
S_k = Π_{j<=k} (1 - h_j). The risk score is -Σ_k S_k: higher risk, shorter expected survival.
"""

from __future__ import annotations

from typing import overload

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from gpfm.heads.errors import InvalidInputError


def _survival_arrays(time: np.ndarray, event: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    time = np.asarray(time, dtype=np.float64)
    event = np.asarray(event)
    if time.ndim != 1 or event.shape != time.shape:
        raise InvalidInputError(
            f"time and event must be 1-D of one length, got {time.shape} and {event.shape}"
        )
    if not np.isfinite(time).all():
        raise InvalidInputError("time has NaN or infinite values; drop or fix those patients")
    if not np.isin(event, (0, 1)).all():
        raise InvalidInputError("event must be 0 (censored) or 1 (event observed)")
    return time, event.astype(bool)


def time_bins(time: np.ndarray, event: np.ndarray, n_bins: int = 4) -> np.ndarray:
    """Cut points of ``n_bins`` time bins at quantiles of the uncensored times.

    Args:
        time: (N,) follow-up times (any unit, e.g. months) of the *training* patients.
        event: (N,) 1 where the event was observed, 0 where censored.
        n_bins: K, the number of bins (GPFM: 4).

    Returns:
        (K - 1,) increasing cut points, in the unit of ``time``. Bin k covers
        [cut_{k-1}, cut_k); the first bin starts at -inf and the last ends at +inf, so every
        time, including later test times, falls in a bin (see ``discretize_time``).
    """
    time, event = _survival_arrays(time, event)
    if n_bins < 1:
        raise InvalidInputError(f"n_bins must be >= 1, got {n_bins}")
    uncensored = time[event]
    if len(uncensored) < n_bins:
        raise InvalidInputError(
            f"{len(uncensored)} uncensored times cannot define {n_bins} time bins; use fewer "
            "bins or more patients"
        )
    cuts = np.quantile(uncensored, np.linspace(0, 1, n_bins + 1)[1:-1])
    if np.any(np.diff(cuts) <= 0):
        raise InvalidInputError(
            f"time bins collapse (cut points {cuts.tolist()}): too many equal event times for "
            f"{n_bins} bins; use fewer bins"
        )
    return cuts


@overload
def discretize_time(time: Tensor, cuts: np.ndarray | Tensor) -> Tensor: ...
@overload
def discretize_time(time: np.ndarray, cuts: np.ndarray | Tensor) -> np.ndarray: ...
def discretize_time(time: np.ndarray | Tensor, cuts: np.ndarray | Tensor) -> np.ndarray | Tensor:
    """The bin index (int64, 0..K-1) of each time given the cut points from ``time_bins``.

    A time equal to a cut point belongs to the later bin. Works on numpy arrays and on tensors.
    """
    if isinstance(time, Tensor):
        boundaries = torch.as_tensor(cuts, dtype=time.dtype, device=time.device)
        return torch.bucketize(time, boundaries, right=True)
    return np.searchsorted(np.asarray(cuts), np.asarray(time), side="right").astype(np.int64)


def _at_least_float32(values: Tensor) -> Tensor:
    """Half-precision values (from autocast) as float32; float32/64 unchanged."""
    return values.float() if values.dtype in (torch.float16, torch.bfloat16) else values


def _log_survival(logits: Tensor) -> tuple[Tensor, Tensor]:
    """log h (B, K) and log S padded with log S_{-1} = 0 in front (B, K + 1), >= float32."""
    logits = _at_least_float32(logits)
    log_hazard = F.logsigmoid(logits)
    log_survival = torch.cumsum(F.logsigmoid(-logits), dim=1)
    return log_hazard, F.pad(log_survival, (1, 0))


def nll_survival_loss(
    logits: Tensor,
    bin_index: Tensor,
    event: Tensor,
    alpha: float = 0.0,
    *,
    eps: float | None = None,
) -> Tensor:
    """Negative log-likelihood of discrete-time survival, averaged over the batch.

    For a patient in bin y: with the event observed, L_event = -log S_{y-1} - log h_y (survived
    the earlier bins, then the event); censored, L_censored = -log S_y (survived bin y). The loss
    is (1 - alpha) · (L_event + L_censored) + alpha · L_event (Zadeh & Schmid 2020), i.e.
    ``alpha`` up-weights uncensored patients; 0 (the default) is the plain likelihood, and what
    GPFM's benchmark runs (its ``NLLSurvLoss(alpha=0.0)``; 0.15 is only that class's unused
    default). Computed in log space without clamping; with ``eps``, as GPFM computes it
    (``utils/survival_utils.py``): hazards sigmoid(logits), S the cumulative product of
    1 - hazards, each probability clamped at ``eps`` (1e-7) before its log.

    Args:
        logits: (B, K) hazard logits.
        bin_index: (B,) int64 time bin of each patient (``discretize_time``).
        event: (B,) 1/True where the event was observed, 0/False where censored.
        alpha: weight in [0, 1] of the extra uncensored term.
        eps: None, or the clamp of the probability form (GPFM: 1e-7).
    """
    if logits.ndim != 2 or bin_index.shape != logits.shape[:1] or event.shape != bin_index.shape:
        raise InvalidInputError(
            f"logits (B, K), bin_index (B,), event (B,) expected; got {tuple(logits.shape)}, "
            f"{tuple(bin_index.shape)}, {tuple(event.shape)}"
        )
    if not 0.0 <= alpha <= 1.0:
        raise InvalidInputError(f"alpha must be in [0, 1], got {alpha}")
    if eps is None:
        log_hazard, log_survival = _log_survival(logits)
    else:
        hazards = torch.sigmoid(_at_least_float32(logits))
        survival = F.pad(torch.cumprod(1 - hazards, dim=1), (1, 0), value=1.0)
        log_hazard, log_survival = hazards.clamp(min=eps).log(), survival.clamp(min=eps).log()
    y = bin_index.long().unsqueeze(1)
    observed = event.to(log_hazard.dtype)
    event_term = -(log_survival.gather(1, y) + log_hazard.gather(1, y)).squeeze(1) * observed
    censored_term = -log_survival.gather(1, y + 1).squeeze(1) * (1.0 - observed)
    loss = (1.0 - alpha) * (event_term + censored_term) + alpha * event_term
    return loss.mean()


def survival_curve(logits: Tensor) -> Tensor:
    """S_k = P(no event by the end of bin k), (B, K), from (B, K) hazard logits."""
    return torch.exp(_log_survival(logits)[1][:, 1:])


def risk_score(logits: Tensor) -> Tensor:
    """Risk (B,) = -Σ_k S_k from (B, K) hazard logits; higher means shorter survival.

    A (B, 1) input is taken as a Cox log-risk and returned as it is.
    """
    if logits.shape[-1] == 1:
        return _at_least_float32(logits).squeeze(-1)
    return -survival_curve(logits).sum(dim=1)


def cox_loss(risk: Tensor, time: Tensor, event: Tensor) -> Tensor:
    """Negative Cox partial log-likelihood (Breslow ties), averaged over the events.

    -1/E Σ_{i: event} [r_i - log Σ_{j: t_j >= t_i} exp(r_j)], E = number of events; 0 (with a
    gradient of zeros) when the batch has no event. Needs several patients per batch: each event
    is compared with the patients still at risk in the same batch.

    Args:
        risk: (B,) log-risk scores (or (B, 1)).
        time: (B,) follow-up times.
        event: (B,) 1/True where the event was observed.
    """
    risk = _at_least_float32(risk).reshape(-1)
    if time.shape != risk.shape or event.shape != risk.shape:
        raise InvalidInputError(
            f"risk, time and event must be (B,), got {tuple(risk.shape)}, {tuple(time.shape)}, "
            f"{tuple(event.shape)}"
        )
    order = torch.argsort(time, descending=True)
    risk, time, observed = risk[order], time[order].double(), event[order].to(risk.dtype)
    log_cumulative = torch.logcumsumexp(risk, dim=0)
    # Tied times share one risk set: take the cumulative sum at the last member of each tie.
    ascending = -time
    last_of_tie = torch.searchsorted(ascending.contiguous(), ascending.contiguous(), right=True) - 1
    partial = risk - log_cumulative[last_of_tie]
    return -(partial * observed).sum() / observed.sum().clamp_min(1.0)


__all__ = [
    "cox_loss",
    "discretize_time",
    "nll_survival_loss",
    "risk_score",
    "survival_curve",
    "time_bins",
]
