"""Paired confidence intervals for comparing two students on the same prompts (and seeds).

Both demos report a difference between two methods (or a method and a baseline) as a paired
difference: the same seeds (same initial student) and the same test prompts, sampled with the same
evaluation seed, so most of the noise common to both cancels. The interval is a two-level
(hierarchical) percentile bootstrap: resample seeds with replacement, then within each drawn seed
resample its test prompts, and take the mean difference. With one seed it is the ordinary paired
bootstrap over prompts (what the real-LLM demo can afford); with several seeds the seed-to-seed
spread dominates, as it should.

    from student_worker.tools.stats import paired_bootstrap
    d = paired_bootstrap(correct_a_SN, correct_b_SN)   # per-seed, per-prompt scores, [S, N]
    print(f"a beats b by {d.points():+.1f} points (95% CI [{100 * d.low:+.1f}, {100 * d.high:+.1f}])")
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    mean: float        # the observed mean (of the difference, or of the scores)
    low: float         # bounds of the percentile interval
    high: float
    confidence: float

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def as_dict(self) -> dict:
        return {"mean": self.mean, "low": self.low, "high": self.high, "confidence": self.confidence}

    @classmethod
    def from_dict(cls, d: dict) -> Interval:
        """Back from as_dict's fields (other keys, such as the names compared, are ignored)."""
        return cls(d["mean"], d["low"], d["high"], d["confidence"])


def paired_bootstrap(a_SN, b_SN=None, *, clusters_N=None, resamples: int = 4000, confidence: float = 0.95,
                     seed: int = 0) -> Interval:
    """Interval for mean(a - b) over seeds and prompts; b=None gives the interval of mean(a).

    a_SN, b_SN: scores (for example 0/1 correctness) of S seeds on the same N prompts, row s of
    both from seed s and column i from prompt i. A 1-D input is one seed.
    Each resample draws S seeds with replacement and, for every drawn seed independently, N
    prompts with replacement; the statistic is the mean over drawn seeds of the mean over drawn
    prompts. clusters_N: which distinct prompt each column is, where a test set draws the same
    prompt several times (samples of one prompt are not independent evidence): then the distinct
    prompts are what is resampled, each with all its columns.
    """
    diff_SN = np.atleast_2d(np.asarray(a_SN, dtype=np.float64))
    if b_SN is not None:
        b = np.atleast_2d(np.asarray(b_SN, dtype=np.float64))
        if b.shape != diff_SN.shape:
            raise ValueError(f"paired scores need the same [seeds, prompts] shape, got {diff_SN.shape} and {b.shape}")
        diff_SN = diff_SN - b
    num_seeds, num_prompts = diff_SN.shape
    if num_prompts == 0:
        raise ValueError("no prompts to compare")
    rng = np.random.default_rng(seed)
    if clusters_N is None:
        prompt_means_SR = np.stack([_prompt_means(row, resamples, rng) for row in diff_SN])
    else:
        prompt_means_SR = np.stack([_cluster_means(row, np.asarray(clusters_N), resamples, rng) for row in diff_SN])
    # seed level: draw seeds, and for each drawn seed an independent prompt-level draw
    seeds_RS = rng.integers(num_seeds, size=(resamples, num_seeds))
    columns_RS = rng.integers(resamples, size=(resamples, num_seeds))
    means_R = prompt_means_SR[seeds_RS, columns_RS].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means_R, [tail, 1 - tail])
    return Interval(float(diff_SN.mean()), float(low), float(high), confidence)


def describe(name_a: str, name_b: str, d: Interval, unit: str = "points", scale: float = 100.0) -> str:
    """One sentence that says only what the interval supports: a win, a loss, or a tie."""
    ci = f"{int(round(100 * d.confidence))}% CI [{scale * d.low:+.1f}, {scale * d.high:+.1f}]"
    if not d.excludes_zero():
        return f"{name_a} and {name_b} tie ({scale * d.mean:+.1f} {unit}, {ci})"
    verb = "beats" if d.mean > 0 else "trails"
    return f"{name_a} {verb} {name_b} by {scale * abs(d.mean):.1f} {unit} ({ci})"


def _cluster_means(scores_N: np.ndarray, clusters_N: np.ndarray, resamples: int,
                   rng: np.random.Generator) -> np.ndarray:
    """`resamples` bootstrap means of one seed's columns, drawing distinct prompts (clusters)
    with replacement, each with all its columns: the mean over the drawn columns."""
    if clusters_N.shape != scores_N.shape:
        raise ValueError(f"clusters_N has {clusters_N.shape[0]} entries for {scores_N.shape[0]} prompts")
    _, cluster_N = np.unique(clusters_N, return_inverse=True)
    sums_C = np.bincount(cluster_N, weights=scores_N)
    counts_C = np.bincount(cluster_N).astype(np.float64)
    num_clusters = len(counts_C)
    draws_RC = rng.multinomial(num_clusters, np.full(num_clusters, 1 / num_clusters), size=resamples)
    return (draws_RC @ sums_C) / (draws_RC @ counts_C)


def _prompt_means(scores_N: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """`resamples` bootstrap means of one seed's prompts.

    Drawing N prompts with replacement only matters through how often each distinct score is
    drawn, which is multinomial: with 0/1 correctness the differences take 3 values, so this costs
    resamples * 3 draws instead of resamples * N (2,500 prompts: seconds become milliseconds).
    """
    values_K, counts_K = np.unique(scores_N, return_counts=True)
    draws_RK = rng.multinomial(scores_N.size, counts_K / scores_N.size, size=resamples)
    return draws_RK @ values_K / scores_N.size
