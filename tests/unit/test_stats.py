"""student_worker.tools.stats: the paired bootstrap against cases whose answer is known in closed form."""

import math

import numpy as np
import pytest

from student_worker.tools.stats import describe, paired_bootstrap


def test_one_seed_matches_the_normal_interval_of_a_paired_difference():
    # two students answering the same 20k prompts: the paired bootstrap over prompts must give
    # the textbook mean +- 1.96 * sd / sqrt(N) of the per-prompt differences
    rng = np.random.default_rng(1)
    a, b = rng.random(20_000) < 0.7, rng.random(20_000) < 0.6
    d = paired_bootstrap(a, b, resamples=2000)
    diff = a.astype(float) - b
    half = 1.96 * diff.std() / math.sqrt(diff.size)
    assert d.mean == pytest.approx(diff.mean())
    assert (d.high - d.low) / 2 == pytest.approx(half, rel=0.1)
    assert d.low < 0.1 < d.high and d.excludes_zero()


def test_pairing_cancels_what_both_share():
    # b is a with 1% of answers flipped: unpaired the 0.01 gap would vanish in the noise
    rng = np.random.default_rng(2)
    a = (rng.random(5000) < 0.7).astype(float)
    b = a.copy()
    b[rng.choice(np.flatnonzero(a), 50, replace=False)] = 0
    d = paired_bootstrap(a, b, resamples=2000)
    assert d.excludes_zero() and d.low > 0.004


def test_many_seeds_without_prompt_noise_give_the_interval_of_the_seed_means():
    # every prompt of seed s differs by the same d_s: only the seed level varies
    per_seed = np.random.default_rng(3).normal(0.02, 0.05, size=400)
    a_SN = np.repeat(per_seed[:, None], 7, axis=1)
    d = paired_bootstrap(a_SN, np.zeros_like(a_SN), resamples=4000)
    half = 1.96 * per_seed.std() / math.sqrt(per_seed.size)
    assert (d.high - d.low) / 2 == pytest.approx(half, rel=0.1)


def test_repeated_prompts_are_resampled_as_prompts():
    # 400 distinct prompts, each drawn 25 times, where a beats b on some prompts and trails on
    # others: the 10,000 draws are evidence about 400 prompts, and the interval must be that of the
    # 400 per-prompt means (the textbook one), not of 10,000 independent draws (5x narrower)
    rng = np.random.default_rng(4)
    per_prompt = rng.choice([-1.0, 0.0, 1.0], p=[0.3, 0.3, 0.4], size=400)
    clusters = np.repeat(np.arange(400), 25)
    a = (per_prompt[clusters] > 0).astype(float)
    b = (per_prompt[clusters] < 0).astype(float)
    clustered = paired_bootstrap(a, b, clusters_N=clusters, resamples=4000)
    half = 1.96 * per_prompt.std() / math.sqrt(per_prompt.size)
    assert clustered.mean == pytest.approx(per_prompt.mean())
    assert (clustered.high - clustered.low) / 2 == pytest.approx(half, rel=0.1)
    naive = paired_bootstrap(a, b, resamples=4000)
    assert (naive.high - naive.low) * 4 < clustered.high - clustered.low
    # every column its own prompt: the same interval as without clusters
    alone = paired_bootstrap(a[:2000], b[:2000], clusters_N=np.arange(2000), resamples=4000)
    plain = paired_bootstrap(a[:2000], b[:2000], resamples=4000)
    assert alone.high - alone.low == pytest.approx(plain.high - plain.low, rel=0.1)


def test_a_constant_difference_has_no_width():
    d = paired_bootstrap(np.ones((3, 10)), np.zeros((3, 10)))
    assert d.mean == d.low == d.high == 1.0


def test_shapes_must_match():
    with pytest.raises(ValueError, match="same"):
        paired_bootstrap(np.ones((2, 10)), np.ones((3, 10)))


def test_describe_says_tie_only_when_the_interval_holds_zero():
    assert "tie" in describe("gkd", "kd", paired_bootstrap([1, 0, 1, 0], [0, 1, 0, 1], resamples=500))
    win = describe("gkd", "kd", paired_bootstrap(np.ones(50), np.zeros(50)))
    assert win.startswith("gkd beats kd by 100.0 points (95% CI [+100.0, +100.0])")
