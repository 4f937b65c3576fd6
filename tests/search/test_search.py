import threading

import numpy as np
import pytest

from ofa_core.search import (Constraints, Efficiency, InfeasibleError, SearchCancelled, evolutionary_search,
                             pareto_search)


@pytest.fixture(scope="module")
def setup(note10, published_predictor):
    spec = note10.spec
    eff = Efficiency(spec, latency_ms=note10,
                     params=lambda enc: note10.predict(enc) * 1e5)   # a stand-in additive cost callable
    return spec, eff, published_predictor


def test_constraint_respected_and_deterministic(setup):
    spec, eff, pred = setup
    a = evolutionary_search(spec, pred, eff, {"latency_ms": 20}, generations=30, seed=3)
    b = evolutionary_search(spec, pred, eff, Constraints(latency_ms=20), generations=30, seed=3)
    assert a.latency_ms <= 20 and a.predicted_acc > 0.78
    np.testing.assert_array_equal(a.enc, b.enc)
    assert a.predicted_acc == b.predicted_acc and a.generations == 30
    assert a.config.to_dict()["r"] in spec.resolutions


def test_infeasible_raises_at_once_with_minima(setup, note10):
    spec, eff, pred = setup
    generations_run = []
    with pytest.raises(InfeasibleError) as ei:       # "at once": before any generation runs
        evolutionary_search(spec, pred, eff, {"latency_ms": 5, "params": 1e5}, generations=500,
                            progress=lambda g, a, l: generations_run.append(g))
    assert generations_run == []
    assert ei.value.minima["latency_ms"] == pytest.approx(note10.minimum()[0])
    assert ei.value.minima["params"] == pytest.approx(note10.minimum()[0] * 1e5)
    with pytest.raises(InfeasibleError) as ei:
        evolutionary_search(spec, pred, eff, {"latency_ms": 12, "min_accuracy": 0.9}, generations=50)
    assert 0.7 < ei.value.minima["min_accuracy"] < 0.9


def test_accuracy_floor_minimises_latency(setup):
    spec, eff, pred = setup
    r = evolutionary_search(spec, pred, eff, {"min_accuracy": 0.79}, generations=30, seed=0)
    assert r.predicted_acc >= 0.79 and r.objective == "latency_ms"
    assert r.latency_ms < 25


def test_tight_budget_bounded(setup, note10):
    spec, eff, pred = setup
    v = note10.minimum()[0]
    r = evolutionary_search(spec, pred, eff, {"latency_ms": v + 0.05}, generations=10, seed=0)
    assert r.latency_ms <= v + 0.05


def test_progress_and_cancel(setup):
    spec, eff, pred = setup
    seen = []
    evolutionary_search(spec, pred, eff, {"latency_ms": 25}, generations=5, progress=lambda *a: seen.append(a))
    assert [s[0] for s in seen] == list(range(5)) and all(s[2] <= 25 for s in seen)
    ev = threading.Event()
    ev.set()
    with pytest.raises(SearchCancelled):
        evolutionary_search(spec, pred, eff, {"latency_ms": 25}, generations=5, should_stop=ev)
    calls = []
    with pytest.raises(SearchCancelled) as ei:
        evolutionary_search(spec, pred, eff, {"latency_ms": 25}, generations=50,
                            should_stop=lambda: calls.append(1) or len(calls) > 3)
    assert ei.value.generation == 3


def test_pareto_lookup_consistent(setup):
    spec, eff, pred = setup
    front = pareto_search(spec, pred, eff, 10, 60, generations=40, seed=0, polish_rounds=1)
    assert len(front) > 10
    assert np.all(np.diff(front.values) >= 0) and np.all(np.diff(front.acc) > 0)
    np.testing.assert_allclose(eff.fns["latency_ms"](front.enc), front.values)
    for b in (15, 25, 40):
        r = front.lookup(b)
        assert r.latency_ms <= b
        ok = front.values <= b
        assert r.predicted_acc == pytest.approx(front.acc[ok].max())
    assert front.lookup(5) is None


def test_operators_valid_and_fast_latency_exact(setup, note10):
    from ofa_core.search import _Problem, _Space
    from ofa_core.spec import validate_encoded
    spec, eff, pred = setup
    space = _Space(spec, None)
    rng = np.random.default_rng(0)
    par = spec.sample_encoded(25, rng)
    kids = np.concatenate([space.mutate(par, 500, rng, 0.1, 0.5), space.crossover(par, 500, rng)])
    validate_encoded(spec, kids)
    prob = _Problem(spec, pred, eff, Constraints(latency_ms=20), "accuracy")
    codes = prob.codes(kids)
    np.testing.assert_array_equal(prob.metrics(kids, codes)["latency_ms"], note10.predict(kids))
    np.testing.assert_array_equal(prob.accuracy(kids), pred.predict(kids))
    # canonical keys: equal sub-networks (differing only in skipped blocks) share a key
    from ofa_core.spec import canonicalize_encoded
    canon = canonicalize_encoded(spec, kids)
    assert prob.keys(kids, codes) == prob.keys(canon, prob.codes(canon))


def test_init_pool_and_determinism_with_generator(setup):
    spec, eff, pred = setup
    a = evolutionary_search(spec, pred, eff, {"latency_ms": 25}, generations=20, seed=np.random.default_rng(5))
    b = evolutionary_search(spec, pred, eff, {"latency_ms": 25}, generations=20, seed=np.random.default_rng(5))
    c = evolutionary_search(spec, pred, eff, {"latency_ms": 25}, generations=20, seed=5, init_pool=4)
    np.testing.assert_array_equal(a.enc, b.enc)
    assert a.history == b.history and a.latency_ms <= 25 and c.latency_ms <= 25
    assert all(np.diff(a.history) >= 0)


def test_child_plan_children(setup):
    """Planned children: a mutant equals its parent outside its mutating gene groups (a block's ks and e move
    together), about p of the groups mutate, every crossover gene comes from one of its two parents, and fewer
    parents than planned fold safely."""
    from ofa_core.search import _ChildPlan, _Space
    from ofa_core.spec import validate_encoded
    spec, _, _ = setup
    B = spec.n_blocks
    space = _Space(spec, None)
    rng = np.random.default_rng(1)
    par = spec.sample_encoded(25, rng)
    plan = _ChildPlan(space, 25, 400, 300, 3, rng, 0.1, 0.5)
    changed_blocks = []
    for g in range(3):
        kids = plan.children(par, g)
        validate_encoded(spec, kids)
        mut, cross = kids[:400], kids[400:]
        src = par[plan.b[g, :400]]
        grp = plan.mask[g, :400]
        assert (mut[~grp] == src[~grp]).all()
        np.testing.assert_array_equal(grp[:, :B], grp[:, B:2 * B])        # ks and e mutate together
        changed_blocks.append(grp[:, :B].mean())
        a, b = par[plan.a[g, 400:]], par[plan.b[g, 400:]]
        assert ((cross == a) | (cross == b)).all()
        assert ((cross == a) & (cross != b)).any() and ((cross == b) & (cross != a)).any()
    assert abs(np.mean(changed_blocks) - 0.1) < 0.01
    assert 0.4 < plan.mask[:, :400, -1].mean() < 0.6                     # resolution: p_res = 0.5
    many = plan.children(par, 0, 3)                                         # several generations at once
    np.testing.assert_array_equal(many, np.concatenate([plan.children(par, g) for g in range(3)]))
    np.testing.assert_array_equal(plan.children(par[:3], 1, 3), np.concatenate([plan.children(par[:3], g)
                                                                                for g in (1, 2)]))
    few = plan.children(par[:3], 0)
    validate_encoded(spec, few)
    assert (few[400:, None, :] == par[None, :3, :]).any(axis=1).all()     # every gene from one of the 3 parents


def test_cache_reset_changes_nothing(setup, monkeypatch):
    """The accuracy cache (and parent dedup by cache id) only saves time: resetting it every few generations gives
    the same search, generation by generation."""
    from ofa_core import search
    spec, eff, pred = setup
    a = evolutionary_search(spec, pred, eff, {"latency_ms": 22}, generations=40, seed=7)
    monkeypatch.setattr(search._Problem, "max_cache", 300)
    b = evolutionary_search(spec, pred, eff, {"latency_ms": 22}, generations=40, seed=7)
    np.testing.assert_array_equal(a.enc, b.enc)
    assert a.history == b.history


@pytest.mark.parametrize("cons, kw", [({"latency_ms": 25}, {"seed": 1}), ({"latency_ms": 14}, {"seed": 2}),
                                      ({"latency_ms": 30, "min_accuracy": 0.8}, {"seed": 3}),
                                      ({"latency_ms": 22}, {"seed": 4, "dedup_parents": False}),
                                      ({"latency_ms": 22}, {"seed": 5, "mutation_ratio": 1.0}),
                                      ({"params": 2.2e6}, {"seed": 6})])
def test_generations_together_change_nothing(setup, monkeypatch, cons, kw):
    """Making and predicting the children of several generations together (while the parents stay the same) gives
    the search of one generation at a time: the same answer and the same best fitness after every generation."""
    from ofa_core import search
    spec, eff, pred = setup
    seen = []
    a = evolutionary_search(spec, pred, eff, cons, generations=120, progress=lambda *x: seen.append(x), **kw)
    monkeypatch.setattr(search, "_MAX_BLOCK", 1)
    seen1 = []
    b = evolutionary_search(spec, pred, eff, cons, generations=120, progress=lambda *x: seen1.append(x), **kw)
    np.testing.assert_array_equal(a.enc, b.enc)
    np.testing.assert_allclose(a.history, b.history, rtol=0, atol=1e-6)
    assert len(a.history) == 120 and [s[0] for s in seen] == list(range(120)) == [s[0] for s in seen1]
    np.testing.assert_allclose(np.array(seen)[:, 1:], np.array(seen1)[:, 1:], rtol=1e-6)


def test_all_mutants_or_all_crossovers(setup):
    """mutation_ratio 0 (crossovers only) and 1 (mutants only) both run and respect the budget."""
    spec, eff, pred = setup
    for ratio in (0.0, 1.0):
        r = evolutionary_search(spec, pred, eff, {"latency_ms": 25}, generations=12, population_size=10,
                                mutation_ratio=ratio, seed=1)
        assert r.latency_ms <= 25 and r.generations == 12


def test_search_uses_the_table_resolutions_the_predictor_encodes(note10, published_predictor):
    """A table may price input sizes off the supernet's grid (r = 236, 260 as the published specialized nets
    use): the published predictor encodes 236 (its 224..239 slot) but not 260, so a search over the table's
    encodable sizes can pick 236 and never 260, priced by that resolution's entries."""
    from ofa_core.latency import LatencyTable, required_operator_keys
    spec = note10.spec
    tables = {r: dict(t) for r, t in note10.tables.items()}
    for r in (236, 260):
        tables[r] = {k: {"count": 1, "mean": 0.2 * (1 + sum(map(ord, k)) % 7) * r / 224}
                     for k in required_operator_keys(spec, r)}
    table = LatencyTable(spec, tables)
    res = published_predictor.encodable(table.resolutions)
    assert res == (160, 176, 192, 208, 224, 236)
    eff = Efficiency(spec, latency_ms=table)
    a = evolutionary_search(spec, published_predictor, eff, {"latency_ms": 1e4}, population_size=20,
                            generations=3, seed=0, resolutions=(236,))
    assert a.config.r == 236
    assert a.latency_ms == pytest.approx(float(table.predict(a.enc[None])[0]))
    same_at_224 = a.enc.copy()
    same_at_224[-1] = 224
    assert a.predicted_acc == pytest.approx(float(published_predictor.predict(same_at_224[None])[0]), abs=1e-6)
    b = evolutionary_search(spec, published_predictor, eff, {"latency_ms": 30}, population_size=40,
                            generations=10, seed=1, resolutions=res)
    assert b.config.r in res and b.latency_ms <= 30


def test_a_budget_equal_to_the_minimum_is_feasible(setup, note10):
    """A float sum printed and parsed back (or summed in another order) can land one ulp below the exact value:
    a budget equal to the smallest achievable latency still admits it."""
    spec, eff, pred = setup
    lo, enc = note10.minimum()
    a = evolutionary_search(spec, pred, eff, {"latency_ms": lo * (1 - 1e-12)}, population_size=8, generations=2)
    assert a.latency_ms == pytest.approx(lo)
    with pytest.raises(InfeasibleError):
        evolutionary_search(spec, pred, eff, {"latency_ms": lo * (1 - 1e-6)}, population_size=8, generations=2)
