"""Published image data set formats read from local files, as uint8 arrays [N, C, H, W] (nothing downloads).

- idx (MNIST, Fashion-MNIST): a big-endian header (two zero bytes, a type code, the number of dimensions, each
  dimension as an int32), then the array; gzipped or not.
- CIFAR-10 binary version: records of 1 label byte and 3072 pixel bytes (1024 red, 1024 green, 1024 blue, each
  32 x 32 row-major). The python version is a pickle; `read_cifar10_pickle` unpickles it with an unpickler that
  admits only the numpy array constructors of that format, so a crafted file cannot run code.
- Any image file Pillow reads (CelebA's aligned JPEGs, folders of images): centre-cropped to a square and resized.

Every reader raises DataFormatError naming the file when it is truncated, corrupt or not of its format.
"""
from __future__ import annotations

import gzip
import io
import pickle
from pathlib import Path

import numpy as np

IDX_TYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
             0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
CIFAR_RECORD = 1 + 3 * 32 * 32
CIFAR_CLASSES = 10


class DataFormatError(ValueError):
    """A data file that is missing, truncated, corrupt or not in the expected format (the message names it)."""


def _read_bytes(path: Path) -> bytes:
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataFormatError(f"{path}: cannot be read ({type(e).__name__}: {e})") from e


def read_idx(path: Path) -> np.ndarray:
    """The array stored in an idx file (`.gz`: gzipped), with its stored shape and dtype (native byte order)."""
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_TYPES:
        raise DataFormatError(f"{path}: not an idx file (the header must start with two zero bytes and a type "
                              f"code in {', '.join(hex(k) for k in IDX_TYPES)})")
    dtype, ndim = IDX_TYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataFormatError(f"{path}: truncated idx header")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise DataFormatError(f"{path}: {'truncated' if len(raw) < expected else 'trailing bytes'}: the header "
                              f"declares shape {shape} ({expected} bytes), the file has {len(raw)} bytes")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx_pair(images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    """MNIST-style images [N, 1, H, W] uint8 and labels [N] int64 from an images and a labels idx file."""
    x, y = read_idx(images), read_idx(labels)
    if x.ndim != 3 or x.dtype != np.uint8:
        raise DataFormatError(f"{images}: expected uint8 images [N, H, W]; got {x.dtype} {x.shape}")
    if y.ndim != 1 or len(y) != len(x):
        raise DataFormatError(f"{labels}: expected {len(x)} labels (one per image of {Path(images).name}); "
                              f"got shape {y.shape}")
    return x[:, None], y.astype(np.int64)


def read_cifar10_bin(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images [N, 3, 32, 32] uint8 and labels [N] int64 of one CIFAR-10 binary batch file."""
    raw = _read_bytes(path)
    if not raw or len(raw) % CIFAR_RECORD:
        raise DataFormatError(f"{path}: truncated or not a CIFAR-10 binary batch: {len(raw)} bytes is not a whole "
                              f"number of {CIFAR_RECORD}-byte records")
    records = np.frombuffer(raw, np.uint8).reshape(-1, CIFAR_RECORD)
    labels = records[:, 0].astype(np.int64)
    _check_labels(path, labels)
    return records[:, 1:].reshape(-1, 3, 32, 32).copy(), labels


def _check_labels(path, labels: np.ndarray) -> None:
    if len(labels) and not 0 <= labels.min() <= labels.max() < CIFAR_CLASSES:
        raise DataFormatError(f"{path}: labels must lie in 0..{CIFAR_CLASSES - 1}; got {labels.min()}..{labels.max()}")


def _reconstruct(cls, *args):
    if cls is not np.ndarray:
        raise pickle.UnpicklingError(f"only numpy.ndarray may be reconstructed; got {cls!r}")
    return np.ndarray.__new__(np.ndarray, *args)


def _dtype(name, *args):
    if name not in ("u1", b"u1"):  # b"u1": the Python 2 str of the official files
        raise pickle.UnpicklingError(f"only uint8 arrays may be unpickled; got dtype {name!r}")
    return np.dtype(name, *args)


class _CifarUnpickler(pickle.Unpickler):
    """Admits only what the CIFAR-10 python batches contain: dicts, lists, bytes, ints and uint8 numpy arrays."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"): _reconstruct,
               ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
               ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): _dtype}

    def find_class(self, module, name):
        try:
            return self.ALLOWED[module, name]
        except KeyError:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}: not part of the CIFAR-10 format") from None


def read_cifar10_pickle(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images [N, 3, 32, 32] uint8 and labels [N] int64 of one CIFAR-10 python batch (a pickled dict with `data`
    [N, 3072] uint8 and `labels`), through an unpickler that refuses every other global."""
    raw = _read_bytes(path)
    try:
        batch = _CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as e:  # noqa: BLE001: any failure of a crafted or truncated pickle is a format error
        raise DataFormatError(f"{path}: not a CIFAR-10 python batch ({type(e).__name__}: {e})") from e
    if not isinstance(batch, dict):
        raise DataFormatError(f"{path}: not a CIFAR-10 python batch (a dict); got {type(batch).__name__}")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataFormatError(f"{path}: `data` must be a uint8 array [N, 3072]")
    if not isinstance(labels, list) or len(labels) != len(data) or not all(isinstance(k, int) for k in labels):
        raise DataFormatError(f"{path}: `labels` must be a list of {len(data)} ints")
    labels = np.asarray(labels, dtype=np.int64)
    _check_labels(path, labels)
    return data.reshape(-1, 3, 32, 32).copy(), labels


def read_image(path: Path, size: int, *, grayscale: bool = False) -> np.ndarray:
    """One image [C, size, size] uint8 (C = 3, or 1 with grayscale=True): the largest centred square, resized with
    Pillow's antialiasing bicubic filter."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("L" if grayscale else "RGB")
            w, h = im.size
            side = min(w, h)
            left, top = (w - side) // 2, (h - side) // 2
            im = im.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)
            x = np.asarray(im, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise DataFormatError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e
    return x[None] if grayscale else x.transpose(2, 0, 1)
