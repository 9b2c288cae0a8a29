import numpy as np

from stmcdi import _estimators as est
from stmcdi import _stack as stk


def low_rank_counts(rng, n=80, g=30):
    rate = np.outer(rng.gamma(2.0, 1.0, n), rng.gamma(2.0, 1.0, g))
    return np.log1p(rng.poisson(rate)).astype(np.float32)


def test_fit_weights_recover_a_known_combination():
    a, b = np.arange(10.0), np.ones(10)
    assert np.allclose(stk.fit_weights({"a": a, "b": b}, 2 * a + 3 * b, np.ones(10)), [2.0, 3.0])
    w = stk.fit_weights({"a": a, "b": b}, -a + 3 * b, np.ones(10))
    assert (w >= 0).all()


def test_the_stack_weighs_an_informative_extra_estimate_and_round_trips():
    rng = np.random.default_rng(0)
    x = low_rank_counts(rng, n=120, g=40)
    held = est.held_back_entries(np.ones(x.shape, bool), seed=0, fraction=0.2)
    r, c = held.nonzero()
    oracle = x[r, c] + 0.01 * rng.normal(size=r.size)
    stack = stk.fit_stack(x, held, None, extra={"oracle": oracle})
    assert stack.names[-1] == "oracle" and stack.weights[-1] > 0.9
    assert stack.fitted.shape == (r.size,)
    again = stk.Stack.from_dict(stack.as_dict())
    assert again.names == stack.names and np.allclose(again.weights, stack.weights) and again.params == stack.params


def test_combine_is_the_weighted_sum_of_the_estimates_at_the_held_back_entries():
    rng = np.random.default_rng(2)
    x = low_rank_counts(rng, n=90, g=25)
    coords_table = np.array([[(i + j) % 90 for j in range(1, 19)] for i in range(90)])
    held = est.held_back_entries(np.ones(x.shape, bool), seed=1, fraction=0.2)
    stack = stk.fit_stack(x, held, coords_table)
    estimates = stk.classical_estimates(est.hide(x, held), coords_table, stack.params)
    r, c = held.nonzero()
    values = stk.combine(stack, estimates, np.arange(90))
    assert np.allclose(values[r, c], stack.fitted, atol=1e-4)
    assert (values >= 0).all()


def test_the_zero_dispersion_is_recovered_by_thinning_and_lowers_estimates_of_zeros():
    rng = np.random.default_rng(0)
    for true in (0.1, 0.5, 2.0):
        mu = rng.gamma(2.0, 1.0, 20000)
        counts = rng.poisson(mu * rng.gamma(1 / true, true, mu.size))
        assert abs(stk.fit_zero_dispersion(counts, np.log1p(mu), np.ones(mu.size), 1.0) - true) < 0.25 * true
    mu = rng.gamma(2.0, 1.0, 20000)
    assert stk.fit_zero_dispersion(rng.poisson(mu), np.log1p(mu), np.ones(mu.size), 1.0) < 0.05  # plain Poisson
    v = np.log1p(np.array([[1.0, 4.0], [1.0, 4.0]]))
    out = stk.condition_on_zero(v, np.array([[10.0], [40.0]]), 10.0, 0.5)
    assert (out < v).all() and (out[1] < out[0]).all()  # a zero in a deeper spot says more
    np.testing.assert_array_equal(stk.condition_on_zero(v, np.array([[10.0], [40.0]]), 10.0, 0.0), v)
