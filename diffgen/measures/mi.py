"""Closed forms and estimators of I(z; S), the paper's measure of generalization (claim C1), each checked on a closed form.

The experiment: M training sets S_1..S_M drawn independently from P (n points each), a generator built on each,
K samples from each: z [M, K, D]. With m uniform on {1..M}, and z depending on S only through which S_m was drawn,
    I(z; m) = E_m KL(P_{z|m} || P_z),   P_z = (1/M) sum_m P_{z|m},   0 <= I(z; m) <= log M.
Given the drawn sets, I(z; m) = I(z; S) - I(z; S_1..S_M) <= I(z; S) (chain rule: z depends on (m, S_1..S_M) only
through S_m); the deficit I(z; S_1..S_M) -> 0 as M grows when P_{z|S} is smooth in S and I(z; S) << log M.
A copier of training points on continuous data has I(z; S) = inf, and I(z; m) = log M: the ceiling.

Every estimator is a mean of per-set terms c_m (its estimate of KL(P_{z|m} || P_z)); confidence intervals are a
percentile bootstrap of those terms: sets resampled with replacement, each set's K samples kept together.
Why not re-estimate on the resampled sets: a set drawn twice becomes two classes with identical samples, which an
index-MI estimator reads as two indistinguishable classes (kNN: every point of a duplicated set finds its twin at
distance 0 in the other copy, so its ball holds about twice the points and its term drops by about log 2), and
merging the copies instead leaves about 0.63 M distinct sets, whose I(z; m) is smaller (a copier: log 0.63M).
Bootstrapping the terms is sound to first order: the influence of set m on I(z; m) is exactly its own term
KL(P_{z|m} || P_z) - I, because the derivative through the mixture vanishes (E_m int p_m dp_z / p_z = int dp_z = 0).
`jackknife` (leave one set out, re-estimate on M - 1 genuine sets) is the independent check of that width.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Callable, Sequence

import numpy as np
import torch

from ..base.util import check_positive, tiles
from ..data.datasets import GaussianMixture
from .metrics import Estimate, bootstrap_ci


# ----------------------------------------------------------------------------------------------- closed forms
def gaussian_channel_mi(cov: torch.Tensor, noise_var: float) -> float:
    """0.5 log det(I + cov / noise_var) nats: the largest I(x; x + sqrt(noise_var) e) over inputs x with covariance
    cov [D, D] (attained by a Gaussian x), e ~ N(0, I) independent of x."""
    if cov.ndim != 2 or cov.shape[0] != cov.shape[1]:
        raise ValueError(f"cov must be a square [D, D] matrix; got {tuple(cov.shape)}")
    if not noise_var > 0:
        raise ValueError(f"noise_var must be > 0; got {noise_var}")
    eig = torch.linalg.eigvalsh(cov.to(torch.float64)).clamp(min=0)
    return float(0.5 * torch.log1p(eig / noise_var).sum())


def mi_mean_generator(n: int, *, data_std: float = 1.0, noise_std: float = 1.0, dim: int = 1) -> float:
    """I(z; S) = (D/2) log(1 + s^2 / (n tau^2)) for data N(mu, s^2 I), generator z = mean(S) + tau xi.

    Derivation: z depends on S only through xbar = mean(S) ~ N(mu, s^2/n I), and xi ~ N(0, I) is independent of it,
    so I(z; S) = I(z; xbar) = h(z) - h(z | xbar) = (D/2) log(2 pi e (tau^2 + s^2/n)) - (D/2) log(2 pi e tau^2).
    With s = tau = 1, D = 1: 0.5 log(1 + 1/n) nats.
    """
    check_positive(n=n)
    return 0.5 * dim * math.log1p(data_std**2 / (n * noise_std**2))


@dataclass(frozen=True)
class ExcessRisk:
    """The three terms of E_S KL(P_{z|S} || P) = I(z; S) + KL(P_z || P), P the true distribution (nats)."""

    total: float  # E_m KL(P_{z|m} || P): how far a generator's output is from the truth, on average
    mi: float  # I(z; m) = E_m KL(P_{z|m} || P_z): generalization error (dependence on the training set)
    marginal: float  # KL(P_z || P): error of the averaged generator (the "optimization"/bias part)

    @property
    def gap(self) -> float:
        """total - mi - marginal: 0 for exact quantities; for estimates, their disagreement."""
        return self.total - self.mi - self.marginal


def excess_risk_mean_generator(n: int, *, data_std: float = 1.0, noise_std: float = 1.0,
                               dim: int = 1) -> ExcessRisk:
    """Closed form for data N(mu, s^2 I), z = mean(S) + tau xi: with r = tau^2 / s^2 and KL(N(a, u) || N(b, v)) =
    (1/2)(u/v - 1 - log(u/v) + (a-b)^2/v), total = (D/2)(r - 1 - log r + 1/n), marginal = same with r -> r + 1/n
    and no 1/n term (P_z = N(mu, (tau^2 + s^2/n) I)), mi = mi_mean_generator."""
    r = noise_std**2 / data_std**2
    total = 0.5 * dim * (r - 1 - math.log(r) + 1 / n)
    rz = r + 1 / n
    marginal = 0.5 * dim * (rz - 1 - math.log(rz))
    return ExcessRisk(total, mi_mean_generator(n, data_std=data_std, noise_std=noise_std, dim=dim), marginal)


def gaussian_kl(mean0: torch.Tensor, cov0: torch.Tensor, mean1: torch.Tensor, cov1: torch.Tensor) -> torch.Tensor:
    """KL(N(mu0, C0) || N(mu1, C1)) = (1/2)[tr(C1^-1 C0) + d^T C1^-1 d - D + log det C1 - log det C0], d = mu1 - mu0;
    means [..., D], covs [..., D, D] (broadcast), result [...]."""
    mean0, cov0, mean1, cov1 = (t.to(torch.float64) for t in (mean0, cov0, mean1, cov1))
    l1 = torch.linalg.cholesky(cov1)
    l0 = torch.linalg.cholesky(cov0)
    a = torch.linalg.solve_triangular(l1, l0, upper=False)  # L1^-1 L0: tr(C1^-1 C0) = ||a||_F^2
    d = torch.linalg.solve_triangular(l1, (mean1 - mean0)[..., None], upper=False)[..., 0]
    logdet = 2 * (l1.diagonal(dim1=-2, dim2=-1).log().sum(-1) - l0.diagonal(dim1=-2, dim2=-1).log().sum(-1))
    return 0.5 * (a.pow(2).sum((-2, -1)) + d.pow(2).sum(-1) - mean0.shape[-1] + logdet)


def gaussian_log_probs(z: torch.Tensor, means: torch.Tensor, covs: torch.Tensor) -> torch.Tensor:
    """log N(z_{m,k}; mu_j, C_j) for z [M, K, D] and every component j: [M, K, J] (J = len(means))."""
    x = z.to(torch.float64).reshape(-1, z.shape[2])  # [N, D]
    chol = torch.linalg.cholesky(covs.to(torch.float64))  # [J, D, D]
    diff = (x[None] - means.to(torch.float64)[:, None]).transpose(1, 2)  # [J, D, N]
    white = torch.linalg.solve_triangular(chol, diff, upper=False)
    logdet = 2 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # [J]
    logp = -0.5 * (white.pow(2).sum(1) + logdet[:, None] + z.shape[2] * math.log(2 * math.pi))  # [J, N]
    return logp.T.reshape(z.shape[0], z.shape[1], len(means))


def mi_density_terms(log_p: torch.Tensor) -> torch.Tensor:
    """Monte Carlo with exact densities: c_m = mean_k [log p_m(z_mk) - log (1/M) sum_j p_j(z_mk)], z_mk ~ P_{z|m},
    from log_p [M, K, M] (log_p[m, k, j] = log p_j(z_mk)); unbiased for KL(P_{z|m} || P_z) given the sets."""
    _check_log_p(log_p)
    own = log_p.diagonal(dim1=0, dim2=2).T  # [M, K]: log p_m(z_mk)
    return (own - torch.logsumexp(log_p, 2) + math.log(log_p.shape[0])).mean(1)


def excess_risk_densities(log_p: torch.Tensor, log_p_data: torch.Tensor) -> ExcessRisk:
    """The three terms by Monte Carlo over z_mk ~ P_{z|m} with exact densities: log_p [M, K, M] as in
    mi_density_terms, log_p_data [M, K] = log P(z_mk). Unbiased given the sets; the identity holds per sample."""
    _check_log_p(log_p)
    if log_p_data.shape != log_p.shape[:2]:
        raise ValueError(f"log_p_data must be [M, K] = {tuple(log_p.shape[:2])}; got {tuple(log_p_data.shape)}")
    own = log_p.diagonal(dim1=0, dim2=2).T
    log_mix = torch.logsumexp(log_p, 2) - math.log(log_p.shape[0])
    return ExcessRisk(total=_fmean(own - log_p_data), mi=_fmean(own - log_mix), marginal=_fmean(log_mix - log_p_data))


def _fmean(values: torch.Tensor) -> float:
    """Exactly rounded mean (math.fsum): independent of the order of the values, so of the labels of the sets."""
    flat = values.reshape(-1).tolist()
    return math.fsum(flat) / len(flat)


def _check_log_p(log_p: torch.Tensor) -> None:
    if log_p.ndim != 3 or log_p.shape[0] != log_p.shape[2]:
        raise ValueError(f"log_p must be [M, K, M] (log density of every set's z under every set's P_z|j); "
                         f"got {tuple(log_p.shape)}")


# ----------------------------------------------------------------------------------------------- the grid plug-in
def uniform_edges(low: float, high: float, bins: int, dim: int = 1) -> tuple[torch.Tensor, ...]:
    """The same bins + 1 equally spaced edges on [low, high] for each of `dim` axes."""
    check_positive(bins=bins)
    if not high > low:
        raise ValueError(f"need low < high; got low={low}, high={high}")
    return tuple(torch.linspace(low, high, bins + 1, dtype=torch.float64) for _ in range(dim))


def _check_edges(edges: Sequence[torch.Tensor], dim: int) -> list[torch.Tensor]:
    if isinstance(edges, torch.Tensor) or len(edges) != dim:
        raise ValueError(f"edges must be a sequence of D = {dim} 1-D tensors (one per axis, e.g. uniform_edges)")
    out = []
    for e in edges:
        e = torch.as_tensor(e, dtype=torch.float64)
        if e.ndim != 1 or len(e) < 2 or not bool((e[1:] > e[:-1]).all()):
            raise ValueError("each axis' edges must be a 1-D strictly increasing tensor with at least 2 entries")
        out.append(e)
    return out


def _check_z(z: torch.Tensor, min_sets: int = 2) -> None:
    if not isinstance(z, torch.Tensor) or z.ndim != 3 or z.shape[0] < min_sets or z.shape[1] < 1 or z.shape[2] < 1:
        raise ValueError(f"z must be a [M, K, D] tensor with M >= {min_sets} sets; got "
                         f"{tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__}")


def histograms(z: torch.Tensor, edges: Sequence[torch.Tensor]) -> torch.Tensor:
    """Counts [M, C] (float64) of each set's samples z [M, K, D] in the C = prod_d B_d grid cells (row-major).

    The first and last cell of each axis are open-ended (they extend to -inf / +inf), so every sample lands in a
    cell and cell masses of P (grid_mass) sum to 1: the outer edges only matter for plotting."""
    _check_z(z, min_sets=1)
    edges = _check_edges(edges, z.shape[2])
    flat = torch.zeros(z.shape[:2], dtype=torch.long)
    for d, e in enumerate(edges):
        idx = torch.bucketize(z[..., d].to(torch.float64).contiguous(), e[1:-1], right=True)  # [e_j, e_j+1) -> j
        flat = flat * (len(e) - 1) + idx
    cells = math.prod(len(e) - 1 for e in edges)
    ones = torch.ones(flat.shape, dtype=torch.float64)
    return torch.zeros(z.shape[0], cells, dtype=torch.float64).scatter_add_(1, flat, ones)


def grid_mass(data: GaussianMixture, edges: Sequence[torch.Tensor]) -> torch.Tensor:
    """P's mass of each grid cell [C] (open outer cells, as in histograms): sum_c pi_c prod_d [Phi(b) - Phi(a)]."""
    edges = _check_edges(edges, data.means.shape[1])
    mass = data.weights.to(torch.float64)[:, None]  # [C_components, cells so far]
    for d, e in enumerate(edges):
        e = e.clone()
        e[0], e[-1] = -math.inf, math.inf
        u = (e[None] - data.means[:, d, None].to(torch.float64)) / data.std  # [C, B_d + 1]
        lo, hi = u[:, :-1], u[:, 1:]
        upper = lo > 0  # in the upper tail, 1 - Phi differences keep their digits
        axis = torch.where(upper, torch.special.ndtr(-lo) - torch.special.ndtr(-hi),
                           torch.special.ndtr(hi) - torch.special.ndtr(lo))
        mass = (mass[:, :, None] * axis[:, None, :]).reshape(len(mass), -1)
    return mass.sum(0)


def _plogq(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """sum over the last axis of p log(p / q), with 0 log 0 = 0."""
    return torch.where(p > 0, p * (p.log() - q.log()), torch.zeros_like(p)).sum(-1)


def _pooled(counts: torch.Tensor) -> torch.Tensor:
    """pbar [C] = sum_m counts_m / (M K): summed as integers (exact in float64), so no set order can change it."""
    return counts.sum(0) / counts.sum()


def miller_madow_bias(counts: torch.Tensor) -> torch.Tensor:
    """Per-set first-order bias of the plug-in terms [M]: (B_m - 1)/(2K) - (B - 1)/(2MK), B_m and B the numbers of
    occupied cells of set m and of the pooled sample (Miller 1955: E H_plugin = H - (B - 1)/(2N) + O(N^-2))."""
    M, K = counts.shape[0], counts[0].sum()
    occupied = (counts > 0).sum(1).to(torch.float64)
    pooled = float((counts.sum(0) > 0).sum())
    return (occupied - 1) / (2 * K) - (pooled - 1) / (2 * M * K)


def mi_plugin_terms(counts: torch.Tensor, *, miller_madow: bool = False) -> torch.Tensor:
    """Per-set plug-in terms [M]: c_m = sum_b p_m log(p_m / pbar), p_m = counts_m / K, pbar = mean_m p_m
    (minus miller_madow_bias when miller_madow=True); their mean is H(pbar) - mean_m H(p_m)."""
    if counts.ndim != 2 or counts.shape[0] < 2:
        raise ValueError(f"counts must be [M, C] with M >= 2; got {tuple(counts.shape)}")
    K = counts.sum(1)
    if not bool((K == K[0]).all()) or float(K[0]) < 1:
        raise ValueError("every set must have the same number K >= 1 of samples")
    p = counts / K[:, None]
    terms = _plogq(p, _pooled(counts)[None])
    return terms - miller_madow_bias(counts) if miller_madow else terms


def mean_of_terms(terms: torch.Tensor, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> Estimate:
    """I(z; m) as the mean of per-set terms [M] (e.g. averaged over training seeds first) with a percentile
    bootstrap over the sets (see the module note)."""
    return _estimate(terms, n_boot, level, seed)


def _estimate(terms: torch.Tensor, n_boot: int, level: float, seed: int) -> Estimate:
    """Mean of per-set terms with a percentile bootstrap over sets. Terms are sorted and summed with fsum, so the
    estimate and its interval are exactly invariant to relabelling the sets."""
    values = np.sort(terms.detach().cpu().numpy().astype(np.float64))
    return bootstrap_ci(values, lambda v: math.fsum(v) / len(v), n_boot=n_boot, level=level, seed=seed)


def mi_plugin_grid(z: torch.Tensor, edges: Sequence[torch.Tensor], *, miller_madow: bool = True,
                   n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> Estimate:
    """Plug-in I(z; m) on a fixed grid: histogram each P_{z|m}, pbar = mean_m, I = mean_m sum_b p_m log(p_m / pbar).

    Bias: (1) finite K, positive: E I_plugin - I_grid ~ [mean_m (B_m - 1) - (B - 1)/M] / (2K), about
    (B - 1)(M - 1) / (2KM) nats when every set occupies all B cells (Miller-Madow; removed to first order by
    miller_madow=True, the default; left in, a generator that ignores S shows that much "information").
    (2) binning, negative: I_grid <= I(z; m) (a cell index is a function of z); shrinks as cells narrow, but
    narrow cells make (1) grow and Miller-Madow fails once cells hold a few samples (tests/test_mi.py measures
    both against exact values). A copier shows far less than log M unless cells separate the training points of
    different sets.
    CI: percentile bootstrap of the per-set terms (see the module note).
    """
    terms = mi_plugin_terms(histograms(z, edges), miller_madow=miller_madow)
    return _estimate(terms, n_boot, level, seed)


# ----------------------------------------------------------------------------------------------- k nearest neighbours
def _sq_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """||a_i - b_j||^2 [..., A, B] from explicit differences, accumulated coordinate by coordinate in float64.
    The same elementwise operations for every pair whatever the batch: a pair's value never depends on the tiling
    (the radius of a point and the ball counts around it agree exactly), and no |a|^2 - 2ab + |b|^2 cancellation."""
    out = (a[..., :, None, 0] - b[..., None, :, 0]).square()
    for d in range(1, a.shape[-1]):
        out += (a[..., :, None, d] - b[..., None, :, d]).square()
    return out


def _within_sets(z: torch.Tensor, k: int, chunk_elems: int = 2**23, *, pad: float | None = None):
    """For each z_mk, brute force within its own set: (r2, k_i) [M, K] = the squared distance to its k-th nearest
    other sample of the set, and the number of other samples of the set within that distance (k unless ties).
    With `pad` (see _ball_counts), also the set's samples (itself included) within the shell radii _shell(r2, pad)
    and whether one lies within rounding of a shell edge, from the same explicit distances: (r2, own, inner, outer,
    edge)."""
    M, K, _ = z.shape
    per = max(1, chunk_elems // (K * K))
    out = []
    for sl in tiles(M, per):
        d2 = _sq_dist(z[sl], z[sl])  # [m, K, K]
        kth = d2.topk(k + 1, dim=2, largest=False).values[..., k]  # [..., 0] is the point itself
        parts = [kth, (d2 <= kth[..., None]).sum(2) - 1]
        if pad is not None:
            lo, hi = (v.square()[..., None] for v in _shell(kth, pad))
            parts += [(d2 <= lo).sum(2), (d2 <= hi).sum(2),
                      (((d2 - lo).abs() <= 1e-12 * lo) & (lo > 0)).any(2) | ((d2 - hi).abs() <= 1e-12 * hi).any(2)]
        out.append(parts)
    return tuple(torch.cat(column) for column in zip(*out))


def _shell(r2: torch.Tensor, pad: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The radii r (1 - 1e-9) and r (1 + 1e-9) + pad around r = sqrt(r2), the same values wherever computed."""
    r = r2.sqrt()
    return r * (1 - 1e-9), r * (1 + 1e-9) + pad


def _ball_counts(z: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(r2, own, m) [M, K]: _within_sets' radius and own count of each z_mk, and m_i, the number of other samples of
    all sets within distance r_mk, exact.

    One k-d tree of all samples (scipy's cKDTree) counts them within the shell radii r (1 -/+ 1e-9); the own set's
    share of both counts comes from its explicit float64 distances (_sq_dist), so the other sets' counts inside and
    outside the thin shell are known. Where they differ (another set's sample within rounding of the sphere), or an
    own-set sample lies within rounding of a shell edge (where the tree's arithmetic could decide otherwise), the
    explicit distances of the candidates decide."""
    from scipy.spatial import cKDTree

    M, K, D = z.shape
    x = z.reshape(-1, D)
    pad = 1e-12 * (1 + float(x.abs().max()))  # radius 0 (exact duplicates) still finds its duplicates
    r2, own, own_inner, own_outer, edge = _within_sets(z, k, pad=pad)
    lo, hi = (v.reshape(-1).numpy() for v in _shell(r2, pad))
    tree = cKDTree(x.numpy())
    count = lambda radius: torch.from_numpy(tree.query_ball_point(x.numpy(), radius, return_length=True)  # noqa: E731
                                            .astype(np.int64)).reshape(M, K)
    others_inner, others_outer = count(lo) - own_inner, count(hi) - own_outer
    every = (own + others_inner).reshape(-1)
    for i in torch.nonzero(((others_outer != others_inner) | edge).reshape(-1)).flatten().tolist():
        near = torch.from_numpy(np.asarray(tree.query_ball_point(x[i].numpy(), hi[i]), dtype=np.int64))
        every[i] = int((_sq_dist(x[i:i + 1], x[near])[0] <= r2.reshape(-1)[i]).sum()) - 1
    return r2, own, every.reshape(M, K)


def _check_knn(z: torch.Tensor, k: int) -> None:
    _check_z(z)
    if not isinstance(k, int) or not 1 <= k < z.shape[1]:
        raise ValueError(f"k must be an integer in [1, K - 1 = {z.shape[1] - 1}]; got {k!r}")


def mi_knn_terms(z: torch.Tensor, k: int = 3) -> torch.Tensor:
    """Per-set terms [M] of Ross's estimator: c_m = mean_{i in m} [psi(N) - psi(K) + psi(k_i) - psi(m_i)]."""
    _check_knn(z, k)
    M, K, _ = z.shape
    z = z.to(torch.float64)
    _, own, every = _ball_counts(z, k)
    psi = torch.special.digamma
    return _digamma(M * K) - _digamma(K) + (psi(own.to(torch.float64)) - psi(every.to(torch.float64))).mean(1)


def mi_knn(z: torch.Tensor, k: int = 3, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> Estimate:
    """k-NN estimate of I(z; m) (Ross 2014, PLoS ONE 9:e87357): I = psi(N) - <psi(N_m)> + psi(k) - <psi(m_i)>,
    N = MK samples, N_m = K per set, d_i = distance from z_i to its k-th nearest sample of its own set, m_i =
    number of samples of all sets within d_i (the point itself excluded).

    Exact: float64 distances from explicit differences; a k-d tree only finds candidates, and samples within
    rounding of a ball's sphere are decided on those explicit distances (_ball_counts). Ties (atoms, e.g. a copier's repeated training points): psi(k) uses k_i = the number
    of own-set samples within d_i, which is k without ties; so a copier gives psi(N) - psi(K) = log M +
    (M - 1)/(2MK) + O(K^-2), the ceiling, and a constant generator psi(N) - psi(K) + psi(K-1) - psi(N-1) ~ -1/K.
    Bias: positive at small K and shrinking as K grows; for independent z of either sign (an estimate can be
    negative); tests/test_mi.py bounds both against exact values. Larger k: lower variance, more smoothing.
    CI: percentile bootstrap of the per-set terms (see the module note)."""
    return _estimate(mi_knn_terms(z, k), n_boot, level, seed)


def _digamma(x: float) -> float:
    return float(torch.special.digamma(torch.tensor(float(x), dtype=torch.float64)))


def _log_unit_ball(dim: int) -> float:
    """log V_D, V_D = pi^(D/2) / Gamma(D/2 + 1), the volume of the Euclidean unit ball."""
    return 0.5 * dim * math.log(math.pi) - math.lgamma(0.5 * dim + 1)


def _kl_entropy(kth_sq: torch.Tensor, n: int, k: int, dim: int) -> float:
    """Kozachenko-Leonenko: H = psi(n) - psi(k) + log V_D + (D/n) sum_i log rho_i, rho_i the k-th NN distance."""
    return _digamma(n) - _digamma(k) + _log_unit_ball(dim) + 0.5 * dim * _fmean(kth_sq.log())


def _kth_pooled(z: torch.Tensor, k: int) -> torch.Tensor:
    """Squared distance [M, K] from each z_mk to its k-th nearest other sample of the pooled set: the k + 1 nearest
    (itself included) from a k-d tree (scipy's cKDTree, exact search), their squared distances recomputed from
    explicit differences (_sq_dist)."""
    from scipy.spatial import cKDTree

    x = z.reshape(-1, z.shape[2])
    _, nearest = cKDTree(x.numpy()).query(x.numpy(), k=k + 1)
    d2 = (x[:, None, :] - x[torch.from_numpy(nearest)]).square().sum(-1)
    return d2.sort(dim=1).values[:, k].reshape(z.shape[:2])


def excess_risk_knn(z: torch.Tensor, log_prob: Callable[[torch.Tensor], torch.Tensor], k: int = 3) -> ExcessRisk:
    """The three terms from samples when P's log density is known (e.g. GaussianMixture.log_prob):
    KL(Q || P) = -H(Q) - E_Q log p, H by Kozachenko-Leonenko; total = mean_m KL(P_{z|m} || P), marginal = KL of the
    pooled sample, mi = Ross's estimator. Here gap = (H(pooled) - mean_m H(z_m)) - mi_knn: two separate MI
    estimates, not zero by construction; it also carries the entropy estimator's bias, which differs between K
    and MK samples and grows with the curvature of the density (large on the peaked eight_gaussians, small on smooth
    1-D Gaussians; both measured in tests/test_mi.py). Needs continuous z (atoms: -inf)."""
    _check_knn(z, k)
    M, K, D = z.shape
    z = z.to(torch.float64)
    kth, _ = _within_sets(z, k)
    cross = log_prob(z.reshape(-1, D)).reshape(M, K).to(torch.float64)  # log p(z_mk)
    total = _fmean(torch.tensor([-_kl_entropy(kth[m], K, k, D) - _fmean(cross[m]) for m in range(M)]))
    marginal = -_kl_entropy(_kth_pooled(z, k), M * K, k, D) - _fmean(cross)
    return ExcessRisk(total=total, mi=_fmean(mi_knn_terms(z, k)), marginal=marginal)


def grid_split_change(before: torch.Tensor, after: torch.Tensor, edges: Sequence[torch.Tensor], mass: torch.Tensor, *,
                      n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[Estimate, Estimate]:
    """How the grid plug-in split (excess_risk_grid) moves between two sample sets of the same training sets
    (z [M, K, D] before and after, e.g. two training snapshots): (change of I(z; m), change of KL(P_z || P)), each
    with a percentile bootstrap that resamples the sets (the same sets before and after)."""
    c0, c1 = histograms(before, edges), histograms(after, edges)
    q = mass.to(torch.float64)

    def change(idx) -> tuple[float, float]:
        out = []
        for counts in (c0[idx], c1[idx]):
            p, pbar = counts / counts.sum(1, keepdim=True), _pooled(counts)
            out.append((_fmean(_plogq(p, pbar[None])), float(_plogq(pbar, q))))
        return out[1][0] - out[0][0], out[1][1] - out[0][1]

    M = len(c0)
    value = change(torch.arange(M))
    rng = np.random.default_rng(seed)
    boots = np.array([change(torch.from_numpy(rng.integers(0, M, M))) for _ in range(n_boot)])
    lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return (Estimate(value[0], float(lo[0]), float(hi[0]), level), Estimate(value[1], float(lo[1]), float(hi[1]), level))


def excess_risk_grid(z: torch.Tensor, edges: Sequence[torch.Tensor], mass: torch.Tensor) -> ExcessRisk:
    """The three terms for the plug-in distributions on one grid: p_m = histogram of set m, pbar = mean_m p_m,
    q = P's cell masses [C] (grid_mass): total = mean_m KL(p_m || q), mi = mean_m KL(p_m || pbar), marginal =
    KL(pbar || q). The identity total = mi + marginal then holds exactly (up to float rounding): it is algebra,
    sum_m p_m log(p_m/q) = sum_m p_m log(p_m/pbar) + M pbar log(pbar/q). No bias correction (it would break it)."""
    counts = histograms(z, edges)
    if mass.shape != counts.shape[1:]:
        raise ValueError(f"mass must have one entry per cell ({counts.shape[1]}); got {tuple(mass.shape)}")
    p = counts / counts.sum(1, keepdim=True)
    pbar = _pooled(counts)
    q = mass.to(torch.float64)
    return ExcessRisk(total=_fmean(_plogq(p, q[None])), mi=_fmean(_plogq(p, pbar[None])),
                      marginal=float(_plogq(pbar, q)))


# ----------------------------------------------------------------------------------------------- jackknife
def jackknife(statistic: Callable[[torch.Tensor], float], z: torch.Tensor, *, level: float = 0.95) -> Estimate:
    """Leave-one-set-out: theta_(j) = statistic(z without set j), se^2 = (M-1)/M sum_j (theta_(j) - mean)^2,
    interval statistic(z) -/+ Phi^-1((1 + level)/2) se (normal). Re-estimates on M - 1 distinct sets: no duplicates,
    the check on the per-set bootstrap. Costs M + 1 evaluations of the statistic."""
    _check_z(z)
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1); got {level}")
    M = z.shape[0]
    keep = torch.ones(M, dtype=torch.bool)
    loo = []
    for j in range(M):
        keep[j] = False
        loo.append(float(statistic(z[keep])))
        keep[j] = True
    loo = np.array(loo)
    se = math.sqrt((M - 1) / M * float(((loo - loo.mean()) ** 2).sum()))
    value = float(statistic(z))
    half = NormalDist().inv_cdf((1 + level) / 2) * se
    return Estimate(value, value - half, value + half, level)
