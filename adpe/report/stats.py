"""95% bootstrap intervals over test images, paired deltas against a baseline, and their verdicts.

A *statistic* maps image weights (B, I) -- image i drawn w_i times in draw b -- to the metric of each draw (B,)
(``adpe.report.samples``: mIoU, top-k accuracy, COCO AP). With one run per side:

- ``interval``: the bootstrap of ``scipy.stats.bootstrap`` over the test images: percentile intervals, or for
  COCO AP the basic (reverse percentile) one -- resampled images raise AP (its precision envelope is a maximum
  over noisy precisions), and the basic interval reflects that shift back about the estimate;
- ``paired_delta``: the same, of the difference A - B, both runs under the *same* image draws (the images are
  the pairing), with the fraction of draws whose delta has the other sign than the point delta.

With several seeds of a stage (one run per seed on the same test set), ``seed_interval`` / ``paired_delta``
resample the seeds, then the images (a two-level bootstrap in the spirit of rliable's stratified bootstrap): each
draw averages the metric over a resample of each side's seeds, all evaluated under one image draw. Its interval
holds both the seed-to-seed and the test-set variance. scipy cannot nest the two levels: that part is here.

Verdicts are exactly "better", "worse" (the delta's 95% interval excludes 0) or "not distinguishable".
docs/statistics.md describes the method. Deterministic: every draw comes from ``seed``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

Statistic = Callable[[np.ndarray], np.ndarray]  # image weights (B, I) -> metric per draw (B,)
LEVEL = 0.95
DRAWS = 1000  # mIoU and top-1; COCO AP uses fewer (COCO_DRAWS): each draw re-accumulates every category
COCO_DRAWS = 200
SEED = 0
BETTER, WORSE, SAME = "better", "worse", "not distinguishable"
BLOCK = 50  # draws evaluated at once (memory: BLOCK x images x classes floats for mIoU)


@dataclass(frozen=True)
class Interval:
    """A point estimate and its ``level`` bootstrap interval [low, high], from ``n_images`` test images,
    ``seeds`` runs and ``draws`` bootstrap draws. ``seed_mean`` / ``seed_std``: over the seeds (two or more)."""

    point: float
    low: float
    high: float
    n_images: int
    seeds: int
    draws: int
    level: float = LEVEL
    seed_std: float | None = None

    def scaled(self, factor: float) -> Interval:
        """The same interval in other units (a fraction x 100)."""
        std = None if self.seed_std is None else self.seed_std * factor
        return type(self)(**{**asdict(self), "point": self.point * factor, "low": self.low * factor,
                             "high": self.high * factor, "seed_std": std})

    def summary(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Delta(Interval):
    """A paired difference A - B: its interval, the fraction of draws whose sign differs from the point delta's
    (``sign_flip``) and the ``verdict``."""

    sign_flip: float = 0.0
    verdict: str = SAME

    def scaled(self, factor: float) -> Delta:
        return Delta(**{**asdict(super().scaled(factor)), "sign_flip": self.sign_flip, "verdict": self.verdict})


def verdict(low: float, high: float) -> str:
    """"better" / "worse" when the interval of a delta (higher is better) excludes 0, else "not distinguishable"."""
    if low > 0:
        return BETTER
    if high < 0:
        return WORSE
    return SAME


def sign_flip(draws: np.ndarray, point: float) -> float:
    """The fraction of ``draws`` (B,) whose sign is not the point's (0 counts as flipped; 1 for a point of 0)."""
    if point == 0:
        return 1.0
    return float(np.mean(np.sign(draws) != np.sign(point)))


def counts(indices: np.ndarray, n_images: int) -> np.ndarray:
    """Resampled image indices (B, n) -> how often each image was drawn (B, I), as float weights."""
    indices = np.atleast_2d(indices)
    rows = np.arange(indices.shape[0])[:, None] * n_images
    flat = np.bincount((rows + indices).ravel(), minlength=indices.shape[0] * n_images)
    return flat.reshape(indices.shape[0], n_images).astype(np.float64)


def _bootstrap(statistic: Statistic, n_images: int, draws: int, seed: int, level: float, method: str):
    """scipy's bootstrap over image indices (``method``: 'percentile' or 'basic'): each resample of the images
    becomes weights (B, I)."""
    def on_indices(idx: np.ndarray, axis: int = -1) -> np.ndarray:
        values = statistic(counts(idx, n_images))
        return values[0] if idx.ndim == 1 else values  # scipy's 'basic' also asks for the estimate: a scalar

    return stats.bootstrap((np.arange(n_images),), on_indices, vectorized=True, n_resamples=draws, batch=BLOCK,
                           method=method, confidence_level=level, rng=np.random.default_rng(seed))


def interval(statistic: Statistic, n_images: int, draws: int = DRAWS, seed: int = SEED, level: float = LEVEL,
             method: str = "percentile") -> Interval:
    """The metric of one run with its bootstrap interval over its ``n_images`` test images."""
    point = float(statistic(np.ones((1, n_images)))[0])
    res = _bootstrap(statistic, n_images, draws, seed, level, method)
    return Interval(point, float(res.confidence_interval.low), float(res.confidence_interval.high), n_images, 1,
                    draws, level)


def _seed_matrix(statistics: Sequence[Statistic], weights: np.ndarray) -> np.ndarray:
    """Each seed's metric under each image draw: (S, B), evaluated BLOCK draws at a time."""
    return np.stack([np.concatenate([f(weights[i:i + BLOCK]) for i in range(0, len(weights), BLOCK)])
                     for f in statistics])


def _two_level(sides: Sequence[Sequence[Statistic]], n_images: int, draws: int, seed: int) -> list[np.ndarray]:
    """Per side, the seed-resampled mean under shared image draws: [(B,), ...]."""
    rng = np.random.default_rng(seed)
    weights = counts(rng.integers(0, n_images, (draws, n_images)), n_images)
    out = []
    for statistics in sides:
        per_seed = _seed_matrix(statistics, weights)  # (S, B)
        picks = rng.integers(0, len(statistics), (draws, len(statistics)))  # seeds drawn with replacement
        out.append(per_seed[picks, np.arange(draws)[:, None]].mean(axis=1))
    return out


def _point(statistics: Sequence[Statistic], n_images: int) -> tuple[float, float | None]:
    """The mean over seeds of the metric on all images, and the standard deviation over seeds (two or more)."""
    values = [float(f(np.ones((1, n_images)))[0]) for f in statistics]
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else None


def _bounds(values: np.ndarray, level: float, method: str = "percentile", point: float = 0.0) -> tuple[float, float]:
    """The bounds from bootstrap ``values`` (B,) as scipy's methods take them: 'percentile' the quantiles, 'basic'
    the quantiles reflected about the ``point`` (2 point - q), which undoes a shift of the draws."""
    alpha = (1 - level) / 2
    low, high = (float(q) for q in np.percentile(values, [100 * alpha, 100 * (1 - alpha)]))
    return (low, high) if method == "percentile" else (2 * point - high, 2 * point - low)


def seed_interval(statistics: Sequence[Statistic], n_images: int, draws: int = DRAWS, seed: int = SEED,
                  level: float = LEVEL, method: str = "percentile") -> Interval:
    """The mean over seeds with its interval: ``interval`` for one seed, else seeds then images resampled."""
    if len(statistics) == 1:
        return interval(statistics[0], n_images, draws, seed, level, method)
    point, std = _point(statistics, n_images)
    low, high = _bounds(_two_level([statistics], n_images, draws, seed)[0], level, method, point)
    return Interval(point, low, high, n_images, len(statistics), draws, level, std)


def paired_delta(a: Sequence[Statistic], b: Sequence[Statistic], n_images: int, draws: int = DRAWS,
                 seed: int = SEED, level: float = LEVEL, method: str = "percentile") -> Delta:
    """A - B (each a list of per-seed statistics on the same ``n_images`` images, in the same order): the same
    image draws for both sides. One seed each: scipy's paired percentile bootstrap; else the two-level one."""
    point_a, std_a = _point(a, n_images)
    point_b, _ = _point(b, n_images)
    point = point_a - point_b
    if len(a) == 1 and len(b) == 1:
        res = _bootstrap(lambda w: a[0](w) - b[0](w), n_images, draws, seed, level, method)
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        values = res.bootstrap_distribution
    else:
        side_a, side_b = _two_level([a, b], n_images, draws, seed)
        values = side_a - side_b
        low, high = _bounds(values, level, method, point)
    return Delta(point, low, high, n_images, max(len(a), len(b)), draws, level, None, sign_flip(values, point),
                 verdict(low, high))


def unpaired_delta(a: Statistic, b: Statistic, n_images: int, draws: int = DRAWS, seed: int = SEED,
                   level: float = LEVEL) -> Delta:
    """A - B with independent image draws for each side (what a paired test improves on; for comparison)."""
    rng = np.random.default_rng(seed)
    wa, wb = (counts(rng.integers(0, n_images, (draws, n_images)), n_images) for _ in range(2))
    values = _seed_matrix([a], wa)[0] - _seed_matrix([b], wb)[0]
    point = float(a(np.ones((1, n_images)))[0] - b(np.ones((1, n_images)))[0])
    low, high = _bounds(values, level)
    return Delta(point, low, high, n_images, 1, draws, level, None, sign_flip(values, point), verdict(low, high))
