"""Datasets as flat tensors [N, D] with their per-sample shape.

2-D toys come from a seed; `gmm` has known parameters (so its density and score are exact); `digits` is
scikit-learn's 8x8 digits (ships inside the package, no download). MNIST, Fashion-MNIST, CIFAR-10, CelebA and any
folder of images are read from local files in their official formats (diffgen.data.formats) under a data folder
(`data_dir=`, else $DIFFGEN_DATA); nothing downloads. Pixels are scaled to [-1, 1].
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..base.util import check_non_negative, check_positive, tiles
from . import formats

DATASETS = ("digits", "gmm", "moons", "circle")  # built in: no files needed
FILE_DATASETS = ("mnist", "fashion-mnist", "cifar10", "celeba", "folder")  # read from a data folder
DIGITS_SIZE = 1797
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_IDX = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_CIFAR_BIN = [f"data_batch_{k}.bin" for k in range(1, 6)] + ["test_batch.bin"]
_CIFAR_PY = [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]
# where each data set lives inside the data folder (the folder names of the official archives), what it must hold,
# and where its official archive is published
_LAYOUT = {
    "mnist": (["mnist", "MNIST/raw", "."], "the four idx files " + ", ".join(f"{f}[.gz]" for f in _IDX),
              "https://yann.lecun.com/exdb/mnist/"),
    "fashion-mnist": (["fashion-mnist", "FashionMNIST/raw", "."],
                      "the four idx files " + ", ".join(f"{f}[.gz]" for f in _IDX),
                      "https://github.com/zalandoresearch/fashion-mnist"),
    "cifar10": (["cifar-10-batches-bin", "cifar-10-batches-py", "."],
                "cifar-10-batches-bin/{" + ",".join(_CIFAR_BIN) + "} (the binary version) or cifar-10-batches-py/{"
                + ",".join(_CIFAR_PY) + "} (the python version)", "https://www.cs.toronto.edu/~kriz/cifar.html"),
    "celeba": (["celeba/img_align_celeba", "img_align_celeba", "."], "img_align_celeba/*.jpg (the aligned images)",
               "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"),
    "folder": (["."], "image files (" + ", ".join(IMAGE_EXTENSIONS) + ") in it or its subfolders", None),
}
FETCHABLE = ("mnist", "fashion-mnist", "cifar10")  # `diffgen data get NAME` fetches these into the first subfolder


@dataclass(frozen=True, eq=False)
class Dataset:
    """A training set, a held-out set and a disjoint second training set S' (for S-blind controls), drawn from the
    same distribution and pairwise disjoint."""

    name: str
    train: torch.Tensor  # [N, D]
    heldout: torch.Tensor  # [M, D]
    shape: tuple[int, ...]  # per-sample shape: (2,) for toys, (1, 8, 8) for digits
    seed: int
    disjoint: torch.Tensor | None = None  # [N', D]: a training set for controls that never see `train`

    @property
    def dim(self) -> int:
        return self.train.shape[1]

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 3

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, train={tuple(self.train.shape)}, heldout={tuple(self.heldout.shape)}, "
                f"shape={self.shape}, seed={self.seed})")


@dataclass(frozen=True)
class GaussianMixture:
    """p(x) = sum_k pi_k N(x; mu_k, std^2 I): isotropic components, exact log-density and sampling."""

    means: torch.Tensor  # [K, D]
    std: float
    weights: torch.Tensor  # [K]

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        return self.means[k] + self.std * torch.randn(n, self.means.shape[1], generator=generator, dtype=torch.float64)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) for x [B, D]."""
        d = self.means.shape[1]
        sq = torch.cdist(x.to(torch.float64), self.means).pow(2)
        comp = -sq / (2 * self.std**2) - 0.5 * d * math.log(2 * math.pi * self.std**2)
        return torch.logsumexp(comp + self.weights.log(), dim=1)


def gaussian(dim: int = 1, std: float = 1.0) -> GaussianMixture:
    """P = N(0, std^2 I_dim) as a one-component GaussianMixture (exact density, sampling, cell masses)."""
    check_positive(dim=dim)
    if not std > 0:
        raise ValueError(f"std must be > 0; got {std}")
    return GaussianMixture(means=torch.zeros(1, dim, dtype=torch.float64), std=float(std),
                           weights=torch.ones(1, dtype=torch.float64))


def eight_gaussians(radius: float = 2.0, std: float = 0.15) -> GaussianMixture:
    """The `gmm` toy: 8 equal-weight components on a circle of the given radius."""
    angle = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = radius * torch.stack([angle.cos(), angle.sin()], dim=1)
    return GaussianMixture(means=means, std=std, weights=torch.full((8,), 1 / 8, dtype=torch.float64))


def _toy(name: str, n: int, g: torch.Generator) -> torch.Tensor:
    if name == "gmm":
        return eight_gaussians().sample(n, g)
    if name == "moons":
        from sklearn.datasets import make_moons

        x, _ = make_moons(n, noise=0.05, random_state=int(torch.randint(2**31 - 1, (1,), generator=g)))
        x = torch.from_numpy(x)
        return (x - torch.tensor([0.5, 0.25], dtype=torch.float64)) * 1.5  # roughly centred, unit scale
    if name == "circle":
        angle = torch.rand(n, generator=g, dtype=torch.float64) * 2 * math.pi
        r = 2.0 + 0.05 * torch.randn(n, generator=g, dtype=torch.float64)
        return r[:, None] * torch.stack([angle.cos(), angle.sin()], dim=1)
    raise AssertionError(name)


def _digits() -> torch.Tensor:
    return digits_with_labels()[0]


def digits_with_labels() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as float64 pixels [1797, 64] scaled to [-1, 1] and their labels [1797] (long)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    pixels = d.data.astype(np.float64)  # integers 0..16
    return torch.from_numpy(pixels / 8.0 - 1.0), torch.from_numpy(d.target).long()


def load_dataset(name: str, n_train: int, n_heldout: int = 0, *, n_disjoint: int = 0, seed: int = 0,
                 dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu",
                 data_dir: str | Path | None = None, image_size: int = 32) -> Dataset:
    """Training, held-out and (n_disjoint > 0) second training sets of `name`, pairwise disjoint, drawn (toys) or
    split (images) from `seed`; the training and held-out sets do not depend on n_disjoint. For MNIST, Fashion-MNIST
    and CIFAR-10 the training sets come from the official training split and the held-out set from the test split;
    CelebA and folders (centre-cropped, resized to image_size) are split as one pool, reading only the images drawn."""
    if name not in DATASETS + FILE_DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS + FILE_DATASETS)}; got {name!r}")
    check_positive(n_train=n_train, image_size=image_size)
    check_non_negative(n_heldout=n_heldout, n_disjoint=n_disjoint)
    g = torch.Generator().manual_seed(seed)
    if name in FILE_DATASETS:
        x, shape = _from_files(name, data_folder(name, data_dir), n_train, n_heldout, n_disjoint, image_size, g)
    elif name == "digits":
        x = _split(name, [_digits()], n_train, n_heldout, n_disjoint, g)
        shape = (1, 8, 8)
    else:
        x = _toy(name, n_train + n_heldout, g)
        x = torch.cat([x, _toy(name, n_disjoint, g)]) if n_disjoint else x
        shape = (2,)
    x = x.to(device=device, dtype=dtype)
    cut = n_train + n_heldout
    return Dataset(name, x[:n_train].contiguous(), x[n_train:cut].contiguous(), shape, seed,
                   x[cut:].contiguous() if n_disjoint else None)


def _split(name: str, pools: list[torch.Tensor], n_train: int, n_heldout: int, n_disjoint: int,
           g: torch.Generator) -> torch.Tensor:
    """[train; heldout; disjoint] rows: from one pool, or train and disjoint from pools[0], heldout from pools[1]."""
    train_pool, heldout_pool = pools[0], pools[-1]
    need = n_train + n_disjoint + (n_heldout if len(pools) == 1 else 0)
    got = f"got n_train={n_train}, n_heldout={n_heldout}, n_disjoint={n_disjoint}"
    if len(pools) == 1 and need > len(train_pool):
        raise ValueError(f"{name} has {len(train_pool)} images: n_train + n_heldout + n_disjoint must be <= "
                         f"{len(train_pool)}; {got}")
    if len(pools) > 1 and (need > len(train_pool) or n_heldout > len(heldout_pool)):
        raise ValueError(f"{name} has {len(train_pool)} training and {len(heldout_pool)} test images: n_train + "
                         f"n_disjoint must be <= {len(train_pool)} and n_heldout <= {len(heldout_pool)}; {got}")
    order = torch.randperm(len(train_pool), generator=g)
    if len(pools) == 1:
        train, heldout, disjoint = order.split([n_train, n_heldout, len(order) - n_train - n_heldout])
        return train_pool[torch.cat([train, heldout, disjoint[:n_disjoint]])]
    heldout = torch.randperm(len(heldout_pool), generator=g)[:n_heldout]
    return torch.cat([train_pool[order[:n_train]], heldout_pool[heldout], train_pool[order[n_train:need]]])


def data_folder(name: str, data_dir: str | Path | None = None) -> Path:
    """The folder holding the files of `name` (one of FILE_DATASETS), found in data_dir or $DIFFGEN_DATA; a
    ValueError naming the files expected and where they are published when they are not there."""
    root = data_dir if data_dir not in (None, "") else os.environ.get("DIFFGEN_DATA")
    subfolders, expected, archive = _LAYOUT[name]
    where = f" (the official archive: {archive})" if archive else ""

    def fetch(folder: str) -> str:
        return f"; `diffgen data get {name} --data-dir {folder}` downloads and verifies it" if name in FETCHABLE else ""

    if root in (None, ""):
        raise ValueError(f"dataset {name!r} is read from local files: pass data_dir= (`diffgen run --data-dir`, or "
                         f"set $DIFFGEN_DATA) to a folder holding {expected}{where}{fetch('FOLDER')}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ValueError(f"data_dir {str(root)!r} is not a folder; it must hold {expected}{where}{fetch(str(root))}")
    for sub in subfolders:
        folder = (root / sub).resolve()
        if _holds(name, folder):
            return folder
    raise ValueError(f"no {name} files under {root}: expected {expected} in one of "
                     f"{', '.join(str(root / s) for s in subfolders)}{where}{fetch(str(root))}")


def _idx_file(folder: Path, stem: str) -> Path | None:
    return next((p for p in (folder / stem, folder / f"{stem}.gz") if p.is_file()), None)


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def _holds(name: str, folder: Path) -> bool:
    if not folder.is_dir():
        return False
    if name in ("mnist", "fashion-mnist"):
        return all(_idx_file(folder, f) for f in _IDX)
    if name == "cifar10":
        return all((folder / f).is_file() for f in _CIFAR_BIN) or all((folder / f).is_file() for f in _CIFAR_PY)
    return bool(_image_files(folder))


LABELLED = ("digits", "mnist", "fashion-mnist", "cifar10")  # data sets with class labels (10 classes each)


@dataclass(frozen=True, eq=False)
class Labelled:
    """Labelled images for a feature classifier: a fitting split and a test split, pixels in [-1, 1]."""

    name: str
    x_fit: torch.Tensor  # [N, D]
    y_fit: torch.Tensor  # [N] long
    x_test: torch.Tensor  # [M, D]
    y_test: torch.Tensor  # [M] long
    shape: tuple[int, ...]


def labelled_splits(name: str, *, seed: int = 0, data_dir: str | Path | None = None, max_fit: int = 50000,
                    max_test: int = 10000, test_share: float = 0.2) -> Labelled:
    """The labelled images of `name` (one of LABELLED), float32: MNIST, Fashion-MNIST and CIFAR-10 fit on (up to
    max_fit of) the official training split and test on (up to max_test of) the test split; digits are split
    by `test_share`, from `seed`."""
    if name not in LABELLED:
        raise ValueError(f"dataset {name!r} has no class labels; the labelled data sets are {', '.join(LABELLED)}")
    g = torch.Generator().manual_seed(seed)
    if name == "digits":
        x, y = digits_with_labels()
        order = torch.randperm(len(x), generator=g)
        n_test = int(round(test_share * len(x)))
        test, fit = order[:n_test], order[n_test:]
        return Labelled(name, x[fit].float(), y[fit], x[test].float(), y[test], (1, 8, 8))
    (train, train_y), (test, test_y) = _official_splits(name, data_folder(name, data_dir))
    fit = torch.randperm(len(train), generator=g)[:max_fit]
    held = torch.randperm(len(test), generator=g)[:max_test]
    return Labelled(name, _scaled(train[fit.numpy()], torch.float32), torch.from_numpy(train_y[fit.numpy()]),
                    _scaled(test[held.numpy()], torch.float32), torch.from_numpy(test_y[held.numpy()]), train.shape[1:])


def _official_splits(name: str, folder: Path) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """((train images, labels), (test images, labels)) of MNIST, Fashion-MNIST or CIFAR-10, uint8 [N, C, H, W]."""
    if name in ("mnist", "fashion-mnist"):
        return (formats.read_idx_pair(_idx_file(folder, _IDX[0]), _idx_file(folder, _IDX[1])),
                formats.read_idx_pair(_idx_file(folder, _IDX[2]), _idx_file(folder, _IDX[3])))
    binary = all((folder / f).is_file() for f in _CIFAR_BIN)
    read, files = (formats.read_cifar10_bin, _CIFAR_BIN) if binary else (formats.read_cifar10_pickle, _CIFAR_PY)
    batches = [read(folder / f) for f in files]
    return ((np.concatenate([b[0] for b in batches[:-1]]), np.concatenate([b[1] for b in batches[:-1]])),
            batches[-1])


def _from_files(name: str, folder: Path, n_train: int, n_heldout: int, n_disjoint: int, image_size: int,
                g: torch.Generator) -> tuple[torch.Tensor, tuple[int, ...]]:
    if name in ("mnist", "fashion-mnist", "cifar10"):
        (train, _), (test, _) = _official_splits(name, folder)
        # the rows drawn are scaled, not the pools: one float64 copy of what is used, not of all 60 000 images
        picked = _split(name, [torch.from_numpy(train), torch.from_numpy(test)], n_train, n_heldout, n_disjoint, g)
        return _scaled(picked.numpy()), train.shape[1:]
    files = _image_files(folder)
    picked = _split(name, [torch.arange(len(files))], n_train, n_heldout, n_disjoint, g)
    images = np.stack([formats.read_image(files[int(k)], image_size) for k in picked])
    return _scaled(images), images.shape[1:]


def _scaled(images: np.ndarray, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """uint8 images [N, C, H, W] -> [N, C*H*W] in [-1, 1], computed in float64 and stored as `dtype`, a block of
    rows at a time (no temporary the size of the result)."""
    flat = torch.from_numpy(images.reshape(len(images), -1))
    out = torch.empty(flat.shape, dtype=dtype)
    for sl in tiles(len(flat), 4096):
        out[sl] = flat[sl].double().div_(127.5).sub_(1.0)
    return out
