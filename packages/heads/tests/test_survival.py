import math

import numpy as np
import pytest
import torch
from sksurv.linear_model import CoxPHSurvivalAnalysis
from sksurv.util import Surv

from gpfm.heads import InvalidInputError
from gpfm.heads.survival import (
    cox_loss,
    discretize_time,
    nll_survival_loss,
    risk_score,
    survival_curve,
    time_bins,
)


def test_time_bins_are_quartiles_of_the_uncensored_times():
    time = np.array([1, 2, 3, 4, 5, 6, 7, 8, 100, 200], dtype=float)
    event = np.array([1, 1, 1, 1, 1, 1, 1, 1, 0, 0])
    cuts = time_bins(time, event, n_bins=4)
    assert np.allclose(cuts, np.quantile(np.arange(1, 9), [0.25, 0.5, 0.75]))
    bins = discretize_time(time, cuts)
    assert bins.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 3, 3]
    assert discretize_time(np.array([-5.0, 1e6]), cuts).tolist() == [0, 3]  # open ends
    assert discretize_time(torch.tensor([2.75, 2.76]), cuts).tolist() == [1, 1]


def test_time_bins_refuse_too_few_events():
    with pytest.raises(InvalidInputError, match="2 uncensored times cannot define 4 time bins"):
        time_bins(np.arange(6.0), np.array([1, 1, 0, 0, 0, 0]))
    with pytest.raises(InvalidInputError, match="collapse"):
        time_bins(np.array([1.0, 1, 1, 1, 1, 2]), np.ones(6), n_bins=4)


def _nll_by_hand(logits, bin_index, event, alpha):
    """The discrete-time NLL written out with explicit products, one patient at a time."""
    total = 0.0
    for row, y, observed in zip(logits, bin_index, event, strict=True):
        hazard = 1 / (1 + np.exp(-row))
        survival = np.cumprod(1 - hazard)
        survived_before = 1.0 if y == 0 else survival[y - 1]
        uncensored = -observed * (math.log(survived_before) + math.log(hazard[y]))
        censored = -(1 - observed) * math.log(survival[y])
        total += (1 - alpha) * (uncensored + censored) + alpha * uncensored
    return total / len(logits)


@pytest.mark.parametrize("alpha", [0.0, 0.15, 1.0])
def test_nll_matches_the_likelihood_written_out(alpha):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(9, 4))
    bin_index = rng.integers(0, 4, 9)
    event = rng.integers(0, 2, 9)
    ours = nll_survival_loss(
        torch.tensor(logits), torch.tensor(bin_index), torch.tensor(event), alpha=alpha
    )
    assert float(ours) == pytest.approx(_nll_by_hand(logits, bin_index, event, alpha), rel=1e-6)


def test_nll_stays_finite_where_probabilities_underflow():
    logits = torch.tensor([[-200.0, 200.0, 0.0, 0.0]], requires_grad=True)
    loss = nll_survival_loss(logits, torch.tensor([0]), torch.tensor([1]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_alpha_weighs_only_uncensored_patients_more():
    logits = torch.zeros(2, 4)
    bins, censored = torch.tensor([1, 1]), torch.tensor([0, 0])
    assert float(nll_survival_loss(logits, bins, censored, 0.0)) == pytest.approx(
        float(nll_survival_loss(logits, bins, censored, 0.15)) / 0.85
    )


def test_risk_is_higher_for_higher_hazards():
    low = torch.full((1, 4), -2.0)
    high = torch.full((1, 4), 1.0)
    assert float(risk_score(high)) > float(risk_score(low))
    curve = survival_curve(low)[0]
    assert torch.all(curve[1:] < curve[:-1]) and float(curve[0]) == pytest.approx(
        1 / (1 + math.exp(-2.0))
    )


def _cox_by_hand(risk, time, event):
    total = 0.0
    for i in np.flatnonzero(event):
        at_risk = time >= time[i]
        total += risk[i] - np.log(np.exp(risk[at_risk]).sum())
    return -total / event.sum()


def test_cox_loss_is_the_breslow_partial_likelihood_with_ties():
    rng = np.random.default_rng(1)
    time = rng.integers(1, 6, 20).astype(float)  # many ties
    event = rng.integers(0, 2, 20)
    risk = rng.normal(size=20)
    ours = cox_loss(torch.tensor(risk), torch.tensor(time), torch.tensor(event))
    assert float(ours) == pytest.approx(_cox_by_hand(risk, time, event), rel=1e-6)
    none = cox_loss(torch.tensor(risk), torch.tensor(time), torch.zeros(20))
    assert float(none) == 0.0


def test_minimising_cox_loss_finds_scikit_survivals_cox_coefficients():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(120, 3))
    time = np.round(rng.exponential(np.exp(-(x @ np.array([1.0, -0.5, 0.0])))), 1) + 0.1
    event = rng.random(120) < 0.8
    reference = CoxPHSurvivalAnalysis(alpha=0.0, ties="breslow").fit(
        x, Surv.from_arrays(event, time)
    )
    beta = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [beta], max_iter=200, tolerance_grad=1e-10, line_search_fn="strong_wolfe"
    )
    features, times, events = torch.tensor(x), torch.tensor(time), torch.tensor(event)

    def closure():
        optimizer.zero_grad()
        loss = cox_loss(features @ beta, times, events)
        loss.backward()
        return loss

    optimizer.step(closure)
    assert np.allclose(beta.detach().numpy(), reference.coef_, atol=1e-4)
