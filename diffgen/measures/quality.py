"""Sample-quality distances to held-out data, none of which downloads anything.

- energy distance (Szekely & Rizzo 2013) on raw coordinates: E = 2 E|X - Y| - E|X - X'| - E|Y - Y'| >= 0, zero iff
  the distributions agree;
- squared MMD with a Gaussian kernel (Gretton et al. 2012), unbiased U-statistic;
- Frechet distance (Heusel et al. 2017) between Gaussians fitted to features: |mu1 - mu2|^2 +
  tr(C1 + C2 - 2 (C1^1/2 C2 C1^1/2)^1/2), in float64, here in the feature space of a small classifier that the
  package trains on the data set's own labels and caches (`feature_classifier`: an MLP on scikit-learn's digits, a
  CNN on MNIST, Fashion-MNIST and CIFAR-10); biased upward at small sample sizes, so compare it only at equal sizes;
- kernel distance KID (Binkowski et al. 2018) in the same features (standardised by the reference's): the unbiased
  squared MMD with the cubic kernel (a.b / F + 1)^3, unbiased at any sample size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..base.cache import artifact_key, cache_root, load_or_compute
from ..base.util import check_positive, resolve_device, tiles
from ..data.datasets import Labelled, labelled_splits


def _check_pair(x: torch.Tensor, y: torch.Tensor, min_rows: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"x [N, D] and y [M, D] must agree in D; got {tuple(x.shape)} and {tuple(y.shape)}")
    if len(x) < min_rows or len(y) < min_rows:
        raise ValueError(f"x and y need at least {min_rows} rows each; got {len(x)} and {len(y)}")
    return x.to(torch.float64), y.to(device=x.device, dtype=torch.float64)


PAIRS = 1 << 24  # pairwise values computed at once (128 MiB in float64): memory never grows with N x M


def _sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """||a_i - b_j||^2 [T, M], clamped at 0 against rounding."""
    return (a @ b.T).mul_(-2).add_(a.pow(2).sum(1, keepdim=True)).add_(b.pow(2).sum(1)[None]).clamp_(min=0)


def _mean_pairwise(a: torch.Tensor, b: torch.Tensor, kernel, *, same: bool) -> float:
    """Mean of kernel(a_i, b_j) over all pairs (i, j), excluding i = j when `same` (a U-statistic); `kernel` maps a
    tile of rows of a [T, D] and b [M, D] to [T, M], tiles of at most PAIRS pairs."""
    total = 0.0
    for sl in tiles(len(a), max(1, PAIRS // len(b))):
        vals = kernel(a[sl], b)
        if same:
            idx = torch.arange(sl.start, sl.stop, device=a.device)
            vals[idx - sl.start, idx] = 0.0
        total += float(vals.sum())
    pairs = len(a) * (len(b) - 1) if same else len(a) * len(b)
    return total / pairs


def energy_distance(x: torch.Tensor, y: torch.Tensor, *, unbiased: bool = True) -> float:
    """Squared energy distance 2 E||X - Y|| - E||X - X'|| - E||Y - Y'|| between samples x [N, D] and y [M, D].
    unbiased: within-sample means over pairs i != j (can be slightly negative); else V-statistics (scipy's
    `energy_distance` squared, in 1-D)."""
    x, y = _check_pair(x, y)
    dist = lambda a, b: _sq_dists(a, b).sqrt_()  # noqa: E731
    xx = _mean_pairwise(x, x, dist, same=True) * ((len(x) - 1) / len(x) if not unbiased else 1.0)
    yy = _mean_pairwise(y, y, dist, same=True) * ((len(y) - 1) / len(y) if not unbiased else 1.0)
    return 2 * _mean_pairwise(x, y, dist, same=False) - xx - yy


def median_bandwidth(x: torch.Tensor, y: torch.Tensor, *, cap: int = 1 << 22, bins: int = 4096) -> float:
    """The median heuristic: the median of the pairwise distances ||z_i - z_j||, i < j, of the pooled sample
    z = [x; y] (the lower middle one for an even count, as torch.median), exact in bounded memory. Distances are
    computed in row tiles of at most PAIRS; while more than `cap` of them remain candidates, one pass counts the
    candidates in `bins` equal bins of their range and keeps the bin that holds the median's rank (narrowed to the
    least and the largest value in it); then one pass collects the remaining candidates and sorts them."""
    x, y = _check_pair(x, y, min_rows=1)
    z = torch.cat([x, y])
    if len(z) < 2:
        raise ValueError("median_bandwidth needs at least two rows in x and y together")
    pairs = len(z) * (len(z) - 1) // 2
    rank = (pairs - 1) // 2  # of the lower median, counting from 0
    lo, hi = 0.0, math.nextafter(2 * float((z - z[0]).norm(dim=1).max()), math.inf)  # |z_i - z_j| <= 2 max |z_k - z_0|
    below, inside = 0, pairs  # candidates: the distances in [lo, hi); `below` of them lie under lo
    while inside > cap:
        counts = torch.zeros(bins, dtype=torch.long, device=z.device)
        least = torch.full((bins,), math.inf, dtype=torch.float64, device=z.device)
        most = torch.full((bins,), -math.inf, dtype=torch.float64, device=z.device)
        for d in _distances_in(z, lo, hi):
            # bin of each candidate, monotone in d: a bin's values fill the interval [least, most] alone
            b = (d - lo).mul_(bins / (hi - lo)).floor_().clamp_(0, bins - 1).long()
            counts += torch.bincount(b, minlength=bins)
            least.scatter_reduce_(0, b, d, "amin")
            most.scatter_reduce_(0, b, d, "amax")
        cum = counts.cumsum(0)
        b = int(torch.searchsorted(cum, torch.tensor(rank - below, device=z.device), right=True))
        below, inside = below + int(cum[b] - counts[b]), int(counts[b])
        if float(least[b]) == float(most[b]):  # every candidate left is the same distance
            return float(least[b])
        if (float(least[b]), math.nextafter(float(most[b]), math.inf)) == (lo, hi):
            break  # a range a few rounding steps wide that cannot shrink: collect it
        lo, hi = float(least[b]), math.nextafter(float(most[b]), math.inf)
    return float(torch.cat(list(_distances_in(z, lo, hi))).sort().values[rank - below])


def _distances_in(z: torch.Tensor, lo: float, hi: float):
    """The distances ||z_i - z_j||, i < j, that lie in [lo, hi), one flat tensor per tile of rows."""
    for sl in tiles(len(z), max(1, PAIRS // len(z))):
        d = _sq_dists(z[sl], z[sl.start:]).sqrt_()  # rows i in sl, columns j >= sl.start
        keep = torch.arange(sl.start, len(z), device=z.device)[None] > torch.arange(sl.start, sl.stop,
                                                                                   device=z.device)[:, None]
        keep &= d >= lo
        keep &= d < hi
        d = torch.masked_select(d, keep)  # (d[keep] would hold 2 int64 indices per value on the way)
        yield d


def mmd2(x: torch.Tensor, y: torch.Tensor, bandwidth: float) -> float:
    """Unbiased squared MMD with k(a, b) = exp(-||a - b||^2 / (2 h^2)): mean_{i!=j} k(x_i, x_j) +
    mean_{i!=j} k(y_i, y_j) - 2 mean_{i,j} k(x_i, y_j) (Gretton et al. 2012, eq. 3)."""
    if not bandwidth > 0:
        raise ValueError(f"bandwidth must be > 0; got {bandwidth}")
    x, y = _check_pair(x, y)
    k = lambda a, b: _sq_dists(a, b).div_(-2 * bandwidth**2).exp_()  # noqa: E731
    return _mean_pairwise(x, x, k, same=True) + _mean_pairwise(y, y, k, same=True) - 2 * _mean_pairwise(
        x, y, k, same=False)


def _sqrtm_psd(c: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric PSD matrix via eigh (negative rounding eigenvalues clamped to 0)."""
    eig, vec = torch.linalg.eigh((c + c.T) / 2)
    return (vec * eig.clamp(min=0).sqrt()) @ vec.T


def gaussian_frechet(mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor, cov2: torch.Tensor) -> float:
    """Frechet (2-Wasserstein squared) distance between N(mu1, C1) and N(mu2, C2):
    |mu1 - mu2|^2 + tr C1 + tr C2 - 2 tr (C1^1/2 C2 C1^1/2)^1/2, in float64."""
    mu1, cov1, mu2, cov2 = (v.to(torch.float64) for v in (mu1, cov1, mu2, cov2))
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"means [D] and covariances [D, D] must agree; got {tuple(mu1.shape)}, {tuple(cov1.shape)}, "
                         f"{tuple(mu2.shape)}, {tuple(cov2.shape)}")
    root1 = _sqrtm_psd(cov1)
    cross = torch.linalg.eigvalsh(root1 @ cov2 @ root1).clamp(min=0).sqrt().sum()
    return float((mu1 - mu2).pow(2).sum() + cov1.trace() + cov2.trace() - 2 * cross)


def frechet_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """gaussian_frechet between the Gaussians fitted to the rows of x [N, F] and y [M, F] (unbiased covariances)."""
    x, y = _check_pair(x, y)
    return gaussian_frechet(x.mean(0), torch.cov(x.T).reshape(x.shape[1], -1), y.mean(0),
                            torch.cov(y.T).reshape(y.shape[1], -1))


def kid(x: torch.Tensor, y: torch.Tensor, *, standardize: bool = False) -> float:
    """Kernel distance (KID, Binkowski et al. 2018) between features x [N, F] and y [M, F]: the unbiased squared MMD
    with k(a, b) = (a.b / F + 1)^3, mean_{i!=j} k(x_i, x_j) + mean_{i!=j} k(y_i, y_j) - 2 mean_{i,j} k(x_i, y_j).
    standardize=True: both sets first centred on y's mean and divided by y's overall spread (one affine map, so it
    stays a distance between distributions), for features of arbitrary scale (a small classifier's) where the cubic
    kernel would otherwise work far from the O(1) scale it was made for; Inception features are used raw, as
    published."""
    x, y = _check_pair(x, y)
    if standardize:
        mean = y.mean(0)
        scale = (y - mean).pow(2).mean().sqrt().clamp(min=1e-12)
        x, y = (x - mean) / scale, (y - mean) / scale
    k = lambda a, b: (a @ b.T).div_(x.shape[1]).add_(1).pow_(3)  # noqa: E731
    return _mean_pairwise(x, x, k, same=True) + _mean_pairwise(y, y, k, same=True) - 2 * _mean_pairwise(
        x, y, k, same=False)


# ------------------------------------------------------------------------------------- the feature network

@dataclass(frozen=True)
class ClassifierConfig:
    """A small classifier of 10 classes whose penultimate layer is the feature space of the Frechet distance and
    KID: on 8x8 digits an MLP 64 -> hidden -> features -> 10; on larger images a CNN (3x3 convs of hidden channels,
    two stride-2 convs, global average pooling to `features`) -> 10."""

    hidden: int = 128  # width of the first hidden layer (channels of the CNN's first conv)
    features: int = 32  # width of the feature layer (the Frechet distance lives here)
    train_steps: int = 1500  # AdamW steps
    lr: float = 3e-3  # AdamW learning rate
    weight_decay: float = 1e-3  # AdamW decoupled weight decay
    test_share: float = 0.2  # share of the 1797 digits held out to report the accuracy (other data: the test split)
    seed: int = 0  # seeds the split, the initialisation and the minibatches
    batch_size: int | None = None  # images per step; None: the whole fitting split every step (full batch)

    def __post_init__(self):
        check_positive(hidden=self.hidden, features=self.features, train_steps=self.train_steps)
        if self.batch_size is not None:
            check_positive(batch_size=self.batch_size)
        if not 0 < self.test_share < 1:
            raise ValueError(f"test_share must lie in (0, 1); got {self.test_share}")
        if not self.lr > 0 or not self.weight_decay >= 0:
            raise ValueError(f"lr must be > 0 and weight_decay >= 0; got {self.lr}, {self.weight_decay}")


# the feature classifier of each labelled image size beyond digits (full-batch training would not fit)
IMAGE_CLASSIFIER = ClassifierConfig(hidden=16, features=64, train_steps=2000, lr=2e-3, batch_size=128)


class _FeatureNet(nn.Module):
    def __init__(self, cfg: ClassifierConfig, shape: tuple[int, ...]):
        super().__init__()
        self.shape = tuple(shape)
        if self.shape == (1, 8, 8):
            self.body = nn.Sequential(nn.Linear(64, cfg.hidden), nn.SiLU(), nn.Linear(cfg.hidden, cfg.features),
                                      nn.SiLU())
        else:
            c, h = shape[0], cfg.hidden
            self.body = nn.Sequential(nn.Unflatten(1, self.shape), nn.Conv2d(c, h, 3, padding=1), nn.SiLU(),
                                      nn.Conv2d(h, 2 * h, 3, stride=2, padding=1), nn.SiLU(),
                                      nn.Conv2d(2 * h, cfg.features, 3, stride=2, padding=1), nn.SiLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(cfg.features, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@dataclass(frozen=True, eq=False)
class Classifier:
    """A trained classifier: `features(x)` [B, F] for images x [B, D] in [-1, 1] (diffgen's pixel scale)."""

    net: nn.Module
    cfg: ClassifierConfig
    accuracy: float  # on the test split
    from_cache: bool
    dataset: str = "digits"
    BATCH = 1024  # images per forward pass of features() (a CNN's activations of 50 000 images would be gigabytes)

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        dim = math.prod(self.net.shape)
        if x.ndim != 2 or x.shape[1] != dim:
            raise ValueError(f"x must be {self.dataset} images [B, {dim}]; got {tuple(x.shape)}")
        param = next(self.net.parameters())
        batches = [x[sl] for sl in tiles(len(x), self.BATCH)] or [x]
        return torch.cat([self.net.body(b.to(device=param.device, dtype=param.dtype)).to(torch.float64)
                          for b in batches])

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        param = next(self.net.parameters())
        return self.net(x.to(device=param.device, dtype=param.dtype)).argmax(1)


def digits_classifier(cfg: ClassifierConfig = ClassifierConfig(), *, device: str | torch.device = "auto",
                      cache_dir: Path | None = None) -> Classifier:
    """The classifier of scikit-learn's digits, fit on a (1 - test_share) split (data.labelled_splits)."""
    if not isinstance(cfg, ClassifierConfig):
        raise ValueError(f"cfg must be a ClassifierConfig; got {type(cfg).__name__}")
    return image_classifier(labelled_splits("digits", seed=cfg.seed, test_share=cfg.test_share), cfg, device=device,
                            cache_dir=cache_dir)


def feature_classifier(dataset: str, *, device: str | torch.device = "auto", cache_dir: Path | None = None,
                       data_dir: str | Path | None = None) -> Classifier:
    """The chapters' feature network for `dataset` (one of data.LABELLED): the digits MLP, else an IMAGE_CLASSIFIER
    CNN fit on the official training split."""
    if dataset == "digits":
        return digits_classifier(device=device, cache_dir=cache_dir)
    return image_classifier(labelled_splits(dataset, seed=IMAGE_CLASSIFIER.seed, data_dir=data_dir),
                            IMAGE_CLASSIFIER, device=device, cache_dir=cache_dir)


def image_classifier(data: Labelled, cfg: ClassifierConfig, *, device: str | torch.device = "auto",
                     cache_dir: Path | None = None) -> Classifier:
    """Train the classifier on data's fitting split (cross-entropy, AdamW; full batch unless cfg.batch_size), report
    its accuracy on the test split, or load it from <cache_dir or cache_root()>/quality/<key>.pt (key: config,
    data and code)."""
    dev = resolve_device(device)
    path = (Path(cache_dir) if cache_dir is not None else cache_root()) / "quality" / \
        f"{artifact_key(__name__, cfg, data.name, data.shape, data.x_fit, data.y_fit)}.pt"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        initial = _FeatureNet(cfg, data.shape).state_dict()

    def compute() -> dict:
        net = _FeatureNet(cfg, data.shape)
        net.load_state_dict(initial)
        net = net.to(dev)
        xf, yf = data.x_fit.to(dev), data.y_fit.to(dev)
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        g = torch.Generator().manual_seed(cfg.seed)
        for _ in range(cfg.train_steps):
            rows = slice(None) if cfg.batch_size is None else torch.randint(len(xf), (cfg.batch_size,), generator=g)
            loss = nn.functional.cross_entropy(net(xf[rows]), yf[rows])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            hits = sum(int((net(data.x_test[sl].to(dev)).argmax(1) == data.y_test[sl].to(dev)).sum())
                       for sl in tiles(len(data.x_test), 1024))
        return {"state": {k: v.detach().cpu() for k, v in net.state_dict().items()},
                "accuracy": hits / len(data.x_test)}

    def restore(art: dict) -> tuple[nn.Module, float]:
        net = _FeatureNet(cfg, data.shape)
        net.load_state_dict(art["state"])
        return net.to(dev).eval().requires_grad_(False), float(art["accuracy"])

    (net, accuracy), from_cache = load_or_compute(path, compute, restore, fmt=2, name="diffgen.measures.quality")
    return Classifier(net, cfg, accuracy, from_cache, data.name)
