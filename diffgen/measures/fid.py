"""FID and KID on Inception-v3 pool3 features (2048-d), the numbers diffusion papers publish, from a local
weights file; without one, the same distances in the features of the data set's classifier (quality.feature_classifier),
named as such.

The network is torch-fidelity's port of the TF-FID Inception graph of Heusel et al. (2017) (torch-fidelity==0.4.0,
installed with --no-deps by `make install`: its other extractors need torchvision, its Inception module needs only
torch). Its authors report values equal to the TensorFlow reference up to float precision, the resize to 299 x 299
included (TF1's bilinear resize, which torch's interpolate does not reproduce). Images reach it as 8-bit RGB, as
published FIDs measure saved PNGs: floor(x * 127.5 + 128) clamped to [0, 255] (EDM's PNG writer), grey repeated to
three channels; the network runs in IEEE float32 (no TF32), on the device chosen with device="auto" semantics.

- FID = |mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1^1/2 C2 C1^1/2)^1/2) of the Gaussians fitted to the features
  (quality.gaussian_frechet, unbiased covariances); biased upward at small N: compare only at equal N;
- KID = the unbiased squared MMD with the cubic kernel (a.b / F + 1)^3 on the raw features (quality.kid), unbiased at
  any N: reported beside FID when N < KID_BELOW.
Intervals: the hierarchical bootstrap over seeds, then samples (one seed: the bootstrap over samples; the reference is
held fixed), and the t interval across seeds (metrics.across_seeds).
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import io
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..base.util import check_positive, resolve_device, tiles
from ..data.downloads import ITEMS
from .metrics import Estimate, across_seeds, hierarchical_bootstrap
from .quality import Classifier, feature_classifier, gaussian_frechet, kid

# The published weights: the TF Inception graph of 2015-12-05 converted by torch-fidelity (byte-identical to
# pytorch-fid's pt_inception-2015-12-05-6726825d.pth). The file name carries the sha256 prefix that torch.hub checks.
_WEIGHTS = ITEMS["inception"].files[0]  # diffgen.data.downloads: `diffgen data get inception` fetches and verifies it
INCEPTION_FILE, INCEPTION_URL, INCEPTION_SHA256 = _WEIGHTS.name, _WEIGHTS.urls[0], _WEIGHTS.checksum
WEIGHTS_ENV = "DIFFGEN_FID_WEIGHTS"  # the weights file (or a folder holding INCEPTION_FILE) when no path is passed
KID_BELOW = 10_000  # samples per seed under which KID (unbiased) is reported beside FID (biased upward)
INCEPTION_DIM = 2048
FID_NAME, KID_NAME = "FID (Inception-v3 pool3)", "KID (Inception-v3 pool3)"
DATASET_NAMES = {"digits": "digits", "mnist": "MNIST", "fashion-mnist": "Fashion-MNIST", "cifar10": "CIFAR-10"}
HOW_TO_GET = (f"get it with `diffgen data get inception` (or download {INCEPTION_URL}) and pass it with "
              f"--fid-weights PATH or ${WEIGHTS_ENV}")


# ------------------------------------------------------------------------------------------- the weights file

def weights_path(weights: str | Path | None = None) -> Path | None:
    """`weights`, else $DIFFGEN_FID_WEIGHTS, else None (no Inception: the chapters use their classifier); a folder
    stands for the INCEPTION_FILE in it."""
    chosen = weights if weights not in (None, "") else os.environ.get(WEIGHTS_ENV) or None
    return None if chosen is None else _weights_file(chosen)


def _weights_file(path: str | Path) -> Path:
    path = Path(path).expanduser()
    return path / INCEPTION_FILE if path.is_dir() else path


def read_weights(path: str | Path, sha256: str | None = None) -> bytes:
    """The bytes of the weights file (or of the INCEPTION_FILE in a folder) after checking their sha256 (default
    INCEPTION_SHA256); a ValueError naming the file and how to get the right one when it is missing or differs."""
    path, expected = _weights_file(path), sha256 or INCEPTION_SHA256
    if not path.is_file():
        raise ValueError(f"the FID weights file {path} does not exist; {HOW_TO_GET}")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected:
        raise ValueError(f"the FID weights file {path} has sha256 {digest}, not {expected} (the published "
                         f"{INCEPTION_FILE}): a different or damaged file; {HOW_TO_GET}")
    return data


# ------------------------------------------------------------------------------------------- the network

def _inception_class() -> type:
    """torch-fidelity's FeatureExtractorInceptionV3. The package's __init__ imports every extractor, some through
    torchvision (not installed here: it would pull a CUDA torch); the Inception module needs only torch, so the package
    is registered without running its __init__ and the module imported from it."""
    if "torch_fidelity" not in sys.modules:
        spec = importlib.util.find_spec("torch_fidelity")
        if spec is None:
            raise ImportError("FID needs torch-fidelity: pip install --no-deps torch-fidelity==0.4.0 (make install "
                              "does this)")
        sys.modules["torch_fidelity"] = importlib.util.module_from_spec(spec)
    return importlib.import_module("torch_fidelity.feature_extractor_inceptionv3").FeatureExtractorInceptionV3


def _check_shape(shape) -> tuple[int, int, int]:
    if len(tuple(shape)) != 3 or tuple(shape)[0] not in (1, 3) or any(int(s) < 1 for s in tuple(shape)):
        raise ValueError(f"shape must be (C, H, W) with C 1 (grey) or 3 (RGB); got {shape!r}")
    return tuple(int(s) for s in shape)


def inception_input(x: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Images x [B, C*H*W] in [-1, 1] as the Inception port takes them: uint8 [B, 3, H, W] = floor(x * 127.5 + 128)
    clamped to [0, 255] (8 bits, as a saved PNG), a grey channel repeated three times."""
    img = (x.to(torch.float64) * 127.5 + 128).floor().clamp(0, 255).to(torch.uint8).reshape(len(x), *shape)
    return img.repeat(1, 3, 1, 1) if shape[0] == 1 else img


@contextlib.contextmanager
def _ieee_float32():
    """cuDNN convolutions in IEEE float32 (its default TF32 keeps 10 mantissa bits on Ampere and later GPUs)."""
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = saved


@dataclass(frozen=True, eq=False)
class InceptionFeatures:
    """Inception-v3 pool3 features [B, 2048] (float64) of images x [B, C*H*W] in [-1, 1] of `shape` (C, H, W):
    computed in float32 on the network's device, batch_size images at a time."""

    net: nn.Module
    shape: tuple[int, int, int]
    batch_size: int = 200

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        dim = math.prod(self.shape)
        if x.ndim != 2 or x.shape[1] != dim or len(x) == 0:
            raise ValueError(f"x must be images [B >= 1, {dim}] of shape {self.shape}; got {tuple(x.shape)}")
        dev = next(self.net.parameters()).device
        with _ieee_float32(), torch.autocast(dev.type, enabled=False):
            parts = [self.net(inception_input(x[sl].to(dev), self.shape))[0] for sl in tiles(len(x), self.batch_size)]
        return torch.cat(parts).to(torch.float64)


def load_inception(weights: str | Path, shape, *, device: str | torch.device = "auto", batch_size: int = 200,
                   sha256: str | None = None) -> InceptionFeatures:
    """torch-fidelity's FID Inception-v3 with the weights file `weights` (checked against `sha256`, default
    INCEPTION_SHA256), float32, in eval mode, on `device`, for images of `shape` (C, H, W)."""
    shape = _check_shape(shape)
    check_positive(batch_size=batch_size)
    dev = resolve_device(device)
    data = read_weights(weights, sha256)  # the checked bytes are the ones loaded
    net = _inception_class()("inception-v3-compat", ["2048"], feature_extractor_weights_path=io.BytesIO(data),
                             feature_extractor_internal_dtype="float32")
    return InceptionFeatures(net.to(dev), shape, batch_size)


# ------------------------------------------------------------------------------------------- FID and KID

@dataclass(frozen=True, eq=False)
class Reference:
    """The reference images' features [M, F] and the moments of the Gaussian fitted to them."""

    features: torch.Tensor
    mean: torch.Tensor
    cov: torch.Tensor


def _moments(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return f.mean(0), torch.cov(f.T).reshape(f.shape[1], f.shape[1])


@dataclass(frozen=True)
class SampleQuality:
    """FID, and KID when n < KID_BELOW, of generated samples against a reference, with intervals and the N behind
    them."""

    fid: Estimate  # mean over seeds, hierarchical bootstrap interval (seeds, then samples; one seed: samples)
    kid: Estimate | None  # the same for KID; None when n >= KID_BELOW
    fid_per_seed: tuple[float, ...]
    kid_per_seed: tuple[float, ...]  # empty when kid is None
    n: int  # samples per seed: the N of FID
    n_reference: int  # reference images
    fid_name: str
    kid_name: str

    @property
    def seeds(self) -> int:
        return len(self.fid_per_seed)

    @property
    def fid_across_seeds(self) -> Estimate | None:
        """Mean FID with the t interval across seeds (metrics.across_seeds); None with one seed."""
        return across_seeds(self.fid_per_seed) if self.seeds > 1 else None

    @property
    def kid_across_seeds(self) -> Estimate | None:
        return across_seeds(self.kid_per_seed) if self.seeds > 1 and self.kid is not None else None

    @property
    def metric(self) -> str:
        """The row's metric text: the distance, its features, N, and KID beside FID where N is small."""
        per = " per seed" if self.seeds > 1 else ""
        text = f"{self.fid_name}, N = {self.n} samples{per} vs {self.n_reference} reference images"
        if self.kid is not None:
            text += f"; {self.kid_name} beside it (unbiased; FID is biased upward at N < {KID_BELOW})"
        return text


@dataclass(frozen=True, eq=False)
class QualityFeatures:
    """The feature space of a chapter's sample-quality numbers, with their names for the metric text."""

    extractor: InceptionFeatures | Classifier  # .features(x [B, D]) -> [B, F] float64
    fid_name: str  # FID_NAME, or "Fréchet distance in the features of a <data set> classifier (...)"
    kid_name: str
    inception: bool  # True: Inception-v3 pool3 (FID proper); False: the data set's classifier

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.extractor.features(x)

    def reference(self, images: torch.Tensor) -> Reference:
        """The features of the reference images [M, D] and their moments, computed once for every measure()."""
        f = self.features(images)
        if len(f) < 2:
            raise ValueError(f"the reference needs at least 2 images; got {len(f)}")
        return Reference(f, *_moments(f))

    def measure(self, samples: torch.Tensor | list[torch.Tensor], reference: Reference, *, n_boot: int = 200,
                level: float = 0.95, seed: int = 0) -> SampleQuality:
        """FID (and KID when N < KID_BELOW) of samples [N, D], or of one [N, D] tensor per seed, against
        `reference`: the mean over seeds with the hierarchical bootstrap interval (n_boot replicates; each costs
        two eigendecompositions of F x F), the per-seed values and N."""
        sets = [samples] if isinstance(samples, torch.Tensor) else list(samples)
        if not sets or any(s.ndim != 2 or len(s) != len(sets[0]) for s in sets) or len(sets[0]) < 2:
            raise ValueError(f"samples must be images [N >= 2, D], or one such tensor per seed with the same N; got "
                             f"{[tuple(s.shape) for s in sets]}")
        check_positive(n_boot=n_boot)
        n, with_kid = len(sets[0]), len(sets[0]) < KID_BELOW
        feats = [self.features(s).to(reference.features.device) for s in sets]

        def statistic(g: int, rows) -> float | np.ndarray:
            f = feats[g][torch.as_tensor(rows, device=feats[g].device)]
            fid = gaussian_frechet(*_moments(f), reference.mean, reference.cov)
            return np.array([fid, kid(f, reference.features, standardize=not self.inception)]) if with_kid else fid

        per_seed = np.array([statistic(g, np.arange(n)) for g in range(len(sets))]).reshape(len(sets), -1)
        est = hierarchical_bootstrap([n] * len(sets), statistic, n_boot=n_boot, level=level, seed=seed)
        fid, kid_est = (est[0], est[1]) if with_kid else (est, None)
        return SampleQuality(fid, kid_est, tuple(map(float, per_seed[:, 0])),
                             tuple(map(float, per_seed[:, 1])) if with_kid else (), n, len(reference.features),
                             self.fid_name, self.kid_name)


def quality_features(dataset: str, shape, *, weights: str | Path | None = None,
                     device: str | torch.device = "auto", batch_size: int = 200, cache_dir: Path | None = None,
                     data_dir: str | Path | None = None) -> QualityFeatures:
    """The feature extractor a chapter should use: Inception-v3 pool3 (FID proper) when a weights file is given
    (`weights`, else $DIFFGEN_FID_WEIGHTS; a missing or wrong file is an error, not a fallback), else the classifier
    of `dataset` (quality.feature_classifier), and the metric text says so."""
    path = weights_path(weights)
    if path is not None:
        return QualityFeatures(load_inception(path, shape, device=device, batch_size=batch_size), FID_NAME, KID_NAME,
                               True)
    clf = feature_classifier(dataset, device=device, cache_dir=cache_dir, data_dir=data_dir)
    where = f"the features of a {DATASET_NAMES.get(dataset, dataset)} classifier"
    return QualityFeatures(clf, f"Fréchet distance in {where} (not FID: no Inception weights given)",
                           f"KID in {where}", False)
