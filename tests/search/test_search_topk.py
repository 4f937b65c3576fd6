"""evolutionary_search(top_k=k): the best k distinct feasible candidates of the final population, best first,
without changing the search's answer (verified answers measure them)."""
import numpy as np
import pytest

from ofa_core.search import Efficiency, evolutionary_search
from ofa_core.spec import canonicalize_encoded


@pytest.fixture(scope="module")
def setup(note10, published_predictor):
    spec = note10.spec
    return spec, Efficiency(spec, latency_ms=note10), published_predictor


@pytest.mark.parametrize("cons", [{"latency_ms": 20}, {"latency_ms": 30, "min_accuracy": 0.78}])
def test_top_k_candidates(setup, cons):
    spec, eff, pred = setup
    plain = evolutionary_search(spec, pred, eff, cons, population_size=40, generations=20, seed=1)
    r = evolutionary_search(spec, pred, eff, cons, population_size=40, generations=20, seed=1, top_k=6)
    assert plain.candidates == []                                  # default: unchanged, no candidates
    np.testing.assert_array_equal(plain.enc, r.enc)
    assert plain.predicted_acc == r.predicted_acc
    c = r.candidates
    assert len(c) == 6 and c[0] is r
    enc = np.stack([x.enc for x in c])
    np.testing.assert_array_equal(enc, canonicalize_encoded(spec, enc))          # canonical ...
    assert len(np.unique(enc, axis=0)) == 6                                         # ... and distinct
    assert len({x.config.content_id() for x in c}) == 6
    assert all(x.latency_ms <= cons["latency_ms"] for x in c)                       # feasible
    np.testing.assert_allclose([x.predicted_acc for x in c], pred.predict(enc), rtol=0, atol=1e-6)
    np.testing.assert_allclose([x.latency_ms for x in c], eff.evaluate(enc)["latency_ms"], rtol=1e-9)
    if "min_accuracy" in cons:                                 # fitness: the fastest reaching the floor first
        assert all(x.predicted_acc >= cons["min_accuracy"] for x in c)
        lat = [x.latency_ms for x in c[1:]]
        assert lat == sorted(lat) and c[0].latency_ms <= lat[0] + 1e-9
    else:
        acc = [x.predicted_acc for x in c[1:]]
        assert acc == sorted(acc, reverse=True) and c[0].predicted_acc >= acc[0] - 1e-9
