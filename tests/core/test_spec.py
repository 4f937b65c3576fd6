"""SupernetSpec geometry and the SubnetConfig value type."""
import json

import numpy as np
import pytest

from ofa_core.spec import (ConfigError, SubnetConfig, active_mask, canonicalize_encoded, encode_batch, get_spec,
                           make_divisible, validate_encoded)

W10 = get_spec("ofa_mbv3_d234_e346_k357_w1.0")
W12 = get_spec("ofa_mbv3_d234_e346_k357_w1.2")


def test_published_widths():
    assert W10.widths == {"stem": 16, "first_block": 16, "stages": [24, 40, 80, 112, 160],
                          "final_expand": 960, "last": 1280}
    assert W12.widths == {"stem": 24, "first_block": 24, "stages": [32, 48, 96, 136, 192],
                          "final_expand": 1152, "last": 1536}
    assert make_divisible(19.2) == 24 and make_divisible(134.4) == 136


def test_feature_sizes_follow_reference_formula():
    # first conv (r+1)//2, then int((f-1)/s+1) per stage
    sizes = W12.feature_sizes(224)
    assert sizes[0] == 112 and sizes[4] == 56 and sizes[8] == 28 and sizes[12] == 14 and sizes[16] == 14
    assert sizes[-1] == 7
    assert W10.feature_sizes(130)[0] == 65


def test_validation_names_field_and_allowed_values():
    good = W10.max_config(224).to_dict()
    with pytest.raises(ConfigError, match=r"ks: expected 20 values, got 19"):
        SubnetConfig.from_dict(W10, {**good, "ks": good["ks"][:-1]})
    with pytest.raises(ConfigError, match=r"e\[3\]: 5 is not allowed; allowed values are \[3, 4, 6\]"):
        SubnetConfig.from_dict(W10, {**good, "e": good["e"][:3] + [5] + good["e"][4:]})
    with pytest.raises(ConfigError, match=r"r: 600 is not an input size .* any integer from 32 to 512"):
        SubnetConfig.from_dict(W10, {**good, "r": 600})
    with pytest.raises(ConfigError, match=r"r: 192 is not an input size .*8 to 128 \(trained on \[24, 28, 32\]\)"):
        SubnetConfig.from_dict(get_spec("ofa_mbv3_cifar10"), {**good, "r": 192})
    with pytest.raises(ConfigError, match=r"r: must be an integer"):
        SubnetConfig.from_dict(W10, {**good, "r": 224.5})
    with pytest.raises(ConfigError, match=r"^d: missing"):
        SubnetConfig.from_dict(W10, {k: v for k, v in good.items() if k != "d"})
    with pytest.raises(ConfigError, match=r"colour: unknown field"):
        SubnetConfig.from_dict(W10, {**good, "colour": 1})
    with pytest.raises(ConfigError, match=r"ks\[0\]: expected an integer"):
        SubnetConfig.from_dict(W10, {**good, "ks": ["7"] + good["ks"][1:]})


def test_canonical_form_and_stable_id():
    rng = np.random.default_rng(0)
    c = W10.sample(rng)
    d = c.to_dict()
    # change an entry of a block skipped by depth: the same sub-network, the same id
    stage = next(s for s in range(5) if d["d"][s] < 4)
    skipped = stage * 4 + 3
    d2 = json.loads(json.dumps(d))
    d2["ks"][skipped] = 7
    d2["e"][skipped] = 6
    c2 = SubnetConfig.from_dict(W10, d2)
    assert c2 == c and c2.content_id() == c.content_id()
    assert c2.to_dict()["ks"][skipped] == 3
    # a different active entry gives a different id
    d3 = json.loads(json.dumps(d))
    d3["ks"][0] = 3 if d3["ks"][0] != 3 else 5
    assert SubnetConfig.from_dict(W10, d3).content_id() != c.content_id()
    # the id depends on the supernet too
    assert W10.max_config(224).content_id() != W12.max_config(224).content_id()


def test_json_round_trip_and_encoding():
    rng = np.random.default_rng(1)
    cfgs = [W12.sample(rng) for _ in range(50)]
    for c in cfgs:
        assert SubnetConfig.from_json(W12, c.to_json()) == c
    enc = encode_batch(cfgs)
    assert enc.shape == (50, 46) and enc.dtype == np.int32
    assert [SubnetConfig.from_encoded(W12, row) for row in enc] == cfgs
    np.testing.assert_array_equal(canonicalize_encoded(W12, enc), enc)


def test_sample_encoded_and_mask():
    enc = W10.sample_encoded(1000, np.random.default_rng(2))
    validate_encoded(W10, enc)
    mask = active_mask(W10, enc[:, 40:45])
    assert (mask.reshape(1000, 5, 4).sum(-1) == enc[:, 40:45]).all()
    assert set(np.unique(enc[:, -1])) <= set(W10.resolutions)
    with pytest.raises(ConfigError, match=r"^r: row 0"):
        bad = enc.copy()
        bad[0, -1] = 999
        validate_encoded(W10, bad)
    with pytest.raises(ConfigError, match=r"expected shape \(N, 46\)"):
        validate_encoded(W10, enc[:, :10])


def test_registry_unknown_name():
    with pytest.raises(KeyError, match="unknown supernet 'nope'"):
        get_spec("nope")


def test_stratified_sample_covers_the_size_range_evenly():
    from ofa_core.spec import validate_encoded
    spec = get_spec("ofa_mbv3_cifar10")
    B = spec.n_blocks
    uni = spec.sample_encoded(600, np.random.default_rng(0))
    strat = spec.sample_stratified_encoded(600, np.random.default_rng(0))
    validate_encoded(spec, strat)
    np.testing.assert_array_equal(strat, spec.sample_stratified_encoded(600, np.random.default_rng(0)))
    assert sorted(np.bincount(strat[:, -1])[list(spec.resolutions)]) == [200, 200, 200]

    def spread(enc, lo, hi):                      # 5-95% range of the per-config mean over active genes
        g = enc[:, lo:hi].astype(float)
        g[g == 0] = np.nan
        return np.subtract(*np.nanpercentile(np.nanmean(g, 1), [95, 5]))
    for lo, hi in ((0, B), (B, 2 * B)):           # kernel sizes, expand ratios
        assert spread(strat, lo, hi) > 1.8 * spread(uni, lo, hi)
    depth = lambda e: np.subtract(*np.percentile(e[:, 2 * B:2 * B + spec.n_stages].sum(1), [95, 5]))  # noqa: E731
    assert depth(strat) > depth(uni)


def test_published_specialized_resolutions_are_accepted_everywhere():
    """The published w1.2 specialized nets run at r = 220, 236 and 260 (off the 160..224 grid): configs, encoded
    batches and costs accept them; the cost model prices them exactly like the per-config reference."""
    from ofa_core.costs import CostModel, config_costs
    w12 = get_spec("ofa_mbv3_d234_e346_k357_w1.2")
    rng = np.random.default_rng(0)
    cfgs = [SubnetConfig.from_encoded(w12, e) for e in w12.sample_encoded(6, rng)]
    cfgs = [SubnetConfig.create(w12, c.ks, c.e, c.d, r) for c, r in zip(cfgs, (220, 236, 260, 224, 160, 236))]
    assert [c.r for c in cfgs] == [220, 236, 260, 224, 160, 236]
    assert SubnetConfig.from_dict(w12, cfgs[2].to_dict()) == cfgs[2]
    enc = np.stack([c.encode() for c in cfgs])
    validate_encoded(w12, enc)
    got = CostModel(w12).all(enc)
    for i, c in enumerate(cfgs):
        ref = config_costs(w12, c)
        assert (got["macs"][i], got["params"][i], got["peak_memory"][i]) == (ref["macs"], ref["params"],
                                                                            ref["peak_memory"])
    assert got["macs"][1] > got["macs"][0]            # 236 costs more than 220 for the same blocks
    with pytest.raises(ConfigError, match=r"row 0 index 0 has 513, allowed 32..512"):
        validate_encoded(w12, np.concatenate([enc[:1, :-1], [[513]]], axis=1))
