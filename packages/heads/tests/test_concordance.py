import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from sksurv.metrics import concordance_index_censored, concordance_index_ipcw
from sksurv.util import Surv

from gpfm.heads import InvalidInputError, c_index
from gpfm.heads.concordance import ipcw_c_index


def test_c_index_counts_concordant_comparable_pairs_by_hand():
    time = np.array([1.0, 2.0, 3.0, 4.0])
    event = np.array([1, 0, 1, 1])
    risk = np.array([0.9, 0.5, 0.7, 0.1])
    # Comparable: (0,1) (0,2) (0,3) (2,3); patient 1 is censored so never first.
    # Concordant: all four (higher risk, earlier event).
    assert c_index(time, event, risk) == 1.0
    assert c_index(time, event, -risk) == 0.0
    tied = np.array([0.9, 0.5, 0.9, 0.1])  # (0,2) tied -> counts one half
    assert c_index(time, event, tied) == pytest.approx(3.5 / 4)


def test_an_event_and_a_censoring_at_the_same_time_form_a_pair():
    time = np.array([2.0, 2.0])
    assert c_index(time, np.array([1, 0]), np.array([1.0, 0.0])) == 1.0
    with pytest.raises(InvalidInputError, match="no comparable pairs"):
        c_index(time, np.array([1, 1]), np.array([1.0, 0.0]))  # two events at one time


def _survival_data(draw, n_min=2):
    n = draw(st.integers(n_min, 40))
    time = np.array(draw(st.lists(st.integers(1, 8), min_size=n, max_size=n)), dtype=float)
    event = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    risk = np.array(draw(st.lists(st.integers(-3, 3), min_size=n, max_size=n)), dtype=float)
    return time, event, risk / 2


# scikit-survival divides 0 by 0 (and warns) where no pair is comparable.
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@settings(max_examples=200, deadline=None)
@given(st.data())
def test_c_index_equals_scikit_survival_with_tied_times_and_risks(data):
    time, event, risk = _survival_data(data.draw)
    try:
        expected = concordance_index_censored(event, time, risk)[0]
    except Exception:
        expected = np.nan
    if np.isnan(expected):  # no comparable pair: scikit-survival raises or warns, we raise
        with pytest.raises(InvalidInputError):
            c_index(time, event, risk)
        return
    assert c_index(time, event, risk) == pytest.approx(expected, abs=1e-12)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@settings(max_examples=150, deadline=None)
@given(st.data())
def test_ipcw_c_index_equals_scikit_survival(data):
    train_time, train_event, _ = _survival_data(data.draw, n_min=5)
    assume(train_event.any())  # scikit-survival refuses an all-censored training set
    time, event, risk = _survival_data(data.draw)
    use_tau = data.draw(st.booleans())
    tau = float(data.draw(st.integers(2, 8))) if use_tau else None
    try:
        expected = concordance_index_ipcw(
            Surv.from_arrays(train_event, train_time), Surv.from_arrays(event, time), risk, tau=tau
        )[0]
    except Exception:
        expected = np.nan
    if np.isnan(expected):  # scikit-survival raises or warns, we raise
        with pytest.raises(InvalidInputError):
            ipcw_c_index(train_time, train_event, time, event, risk, tau=tau)
        return
    ours = ipcw_c_index(train_time, train_event, time, event, risk, tau=tau)
    assert ours == pytest.approx(expected, abs=1e-10)


def test_ipcw_weights_late_events_more_when_censoring_is_heavy():
    train_time = np.arange(1.0, 11.0)
    train_event = np.array([1, 0, 1, 0, 1, 0, 1, 0, 1, 0])
    time = np.array([1.0, 5.0, 9.0, 10.0])
    event = np.array([1, 1, 1, 0])
    risk = np.array([0.0, 3.0, 2.0, 1.0])  # pair (0, *) discordant, later pairs concordant
    assert ipcw_c_index(train_time, train_event, time, event, risk) > c_index(time, event, risk)


def test_inputs_are_checked():
    with pytest.raises(InvalidInputError, match="one length"):
        c_index(np.ones(3), np.ones(2), np.ones(3))
    with pytest.raises(InvalidInputError, match="risk has NaN"):
        c_index(np.arange(3.0), np.ones(3), np.array([0.0, np.nan, 1.0]))
    with pytest.raises(InvalidInputError, match="event must be 0"):
        c_index(np.arange(3.0), np.array([0, 2, 1]), np.ones(3))
    with pytest.raises(InvalidInputError, match="pass tau"):
        ipcw_c_index(
            np.arange(1.0, 5.0),
            np.array([1, 0, 1, 1]),
            np.array([1.0, 9.0]),
            np.array([1, 1]),
            np.array([1.0, 0.0]),
        )
