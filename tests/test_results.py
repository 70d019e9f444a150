"""results.json: statistics, reference scores, seeds and schema validation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vlmrl.results import (
    EVAL_SEED_OFFSET,
    HUMAN_RANDOM_SCORES,
    OPTIONAL_RESULTS_KEYS,
    RESULTS_KEYS,
    ResultsSchemaError,
    bootstrap_ci,
    build_results,
    eval_seeds,
    game_slug,
    human_normalized,
    load_results,
    write_results,
)


def _results(**overrides):
    kwargs = dict(
        model="m",
        game="ALE/Pong-v5",
        policy="greedy",
        seeds=[1_000_000, 1_000_001, 1_000_002],
        returns=[-21.0, -19.0, -20.0],
        oracle_agreement=0.5,
        invalid_rate=0.1,
        env_steps=2900,
        steps_per_s=123.4,
        video=None,
    )
    kwargs.update(overrides)
    return build_results(**kwargs)


def test_pong_reference_scores_and_normalisation():
    assert HUMAN_RANDOM_SCORES["Pong"] == (-20.7, 14.6)
    assert human_normalized("ALE/Pong-v5", -20.7) == pytest.approx(0.0)
    assert human_normalized("ALE/Pong-v5", 14.6) == pytest.approx(1.0)
    assert human_normalized("ALE/Pong-v5", 21.0) == pytest.approx(41.7 / 35.3)
    assert human_normalized("PongNoFrameskip-v4", -3.05) == pytest.approx(0.5)
    assert human_normalized("ALE/Breakout-v5", 30.5) == pytest.approx(1.0)
    assert human_normalized("ALE/SpaceInvaders-v5", 148.0) == pytest.approx(0.0)


def test_unknown_game_has_no_normalised_score():
    assert human_normalized("ALE/Tetris-v5", 10.0) is None


def test_game_slug():
    assert game_slug("ALE/Pong-v5") == "pong-v5"
    assert game_slug("ALE/SpaceInvaders-v5") == "spaceinvaders-v5"


def test_bootstrap_single_and_constant_values_are_points():
    assert bootstrap_ci([-20.0]) == (-20.0, -20.0)
    assert bootstrap_ci([3.0, 3.0, 3.0]) == (3.0, 3.0)


def test_bootstrap_two_values_spans_them():
    # Resampled means of two values are -20, -19 or -18 (p = 1/4, 1/2, 1/4): the 95% interval
    # takes the extremes.
    low, high = bootstrap_ci([-20.0, -18.0])
    assert (low, high) == (-20.0, -18.0)


def test_bootstrap_interval_brackets_the_mean_and_is_reproducible():
    values = np.arange(1.0, 11.0)  # mean 5.5, standard error ~0.91
    low, high = bootstrap_ci(values, seed=3)
    assert low < 5.5 < high
    # A percentile interval of the mean of 10 values is about +-1.96 standard errors.
    assert 1.3 < 5.5 - low < 2.3 and 1.3 < high - 5.5 < 2.3
    assert bootstrap_ci(values, seed=3) == (low, high)
    narrow = bootstrap_ci(values, confidence=0.5, seed=3)
    assert low < narrow[0] < narrow[1] < high


def test_bootstrap_is_scipys_percentile_interval():
    from scipy.stats import bootstrap

    values = [-21.0, -20.0, -18.0, -15.0, -20.0]
    expected = bootstrap((np.asarray(values),), np.mean, method="percentile", n_resamples=10000,
                         rng=np.random.default_rng(0)).confidence_interval
    assert bootstrap_ci(values) == (expected.low, expected.high)


def test_bootstrap_rejects_bad_input():
    with pytest.raises(ValueError, match="at least one value"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci([1.0, 2.0], confidence=95)


def test_eval_seeds_are_disjoint_from_collection_seeds():
    seeds = eval_seeds(10)
    assert seeds == [EVAL_SEED_OFFSET + i for i in range(10)]
    assert min(seeds) >= 1_000_000
    with pytest.raises(ValueError):
        eval_seeds(0)


def test_build_results_has_exactly_the_schema():
    results = _results()
    assert tuple(results) == RESULTS_KEYS + ("oracle_agreement_by_phase",)  # no videos, uncapped
    assert set(OPTIONAL_RESULTS_KEYS) == {"oracle_agreement_by_phase", "videos", "max_steps"}
    assert results["episodes"] == 3
    assert results["mean_return"] == pytest.approx(-20.0)
    assert results["std_return"] == pytest.approx(np.std([-21.0, -19.0, -20.0]))
    assert results["ci95"][0] <= -20.0 <= results["ci95"][1]
    assert results["human_normalized"] == pytest.approx(0.7 / 35.3)
    json.dumps(results)  # plain JSON types only


def test_build_results_accepts_numpy_and_no_oracle():
    results = _results(returns=np.array([1.0, 2.0, 3.0]), seeds=np.array([1, 2, 3]), oracle_agreement=None)
    assert results["oracle_agreement"] is None
    assert isinstance(results["returns"][0], float) and isinstance(results["seeds"][0], int)
    json.dumps(results)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"seeds": [1, 2]}, "one seed per episode"),
        ({"returns": [], "seeds": []}, "at least one episode"),
        ({"oracle_agreement": 1.5}, "oracle_agreement"),
        ({"invalid_rate": -0.1}, "invalid_rate"),
        ({"invalid_rate": None}, "invalid_rate"),
    ],
)
def test_build_results_rejects_inconsistent_input(overrides, message):
    with pytest.raises(ResultsSchemaError, match=message):
        _results(**overrides)


def test_write_and_load_round_trip(tmp_path):
    results = _results()
    path = write_results(tmp_path / "a" / "b" / "results.json", results)
    assert load_results(path) == results


def test_load_names_the_missing_keys(tmp_path):
    results = _results()
    del results["ci95"], results["oracle_agreement"]
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    with pytest.raises(ResultsSchemaError, match=r"missing keys \['ci95', 'oracle_agreement'\]"):
        load_results(path)


def test_load_rejects_other_json_and_garbage(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("[1, 2]")
    with pytest.raises(ResultsSchemaError, match="expected a JSON object"):
        load_results(path)
    path.write_text("{not json")
    with pytest.raises(ResultsSchemaError, match="not valid JSON"):
        load_results(path)
    broken = _results()
    broken["returns"] = [1.0]
    path.write_text(json.dumps(broken))
    with pytest.raises(ResultsSchemaError, match="3 seeds for 1 returns"):
        load_results(path)
    with pytest.raises(FileNotFoundError, match="no results file"):
        load_results(tmp_path / "missing.json")


def test_write_refuses_an_invalid_record(tmp_path):
    with pytest.raises(ResultsSchemaError, match="missing keys"):
        write_results(tmp_path / "results.json", {"model": "m"})
    assert not (tmp_path / "results.json").exists()


def test_agreement_by_phase_is_checked_and_optional(tmp_path):
    split = {"toward": {"agreement": 0.5, "steps": 4}, "away": {"agreement": None, "steps": 0}}
    results = _results(oracle_agreement_by_phase=split)
    assert results["oracle_agreement_by_phase"] == split
    with pytest.raises(ResultsSchemaError, match="toward"):
        _results(oracle_agreement_by_phase={"toward": {"agreement": 1.5, "steps": 4}})
    with pytest.raises(ResultsSchemaError, match="agreement and steps"):
        _results(oracle_agreement_by_phase={"toward": {"agreement": 0.5}})
    # A record written before the split existed still loads, without a warning.
    older = {k: v for k, v in _results().items() if k != "oracle_agreement_by_phase"}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(older))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_results(path) == older
