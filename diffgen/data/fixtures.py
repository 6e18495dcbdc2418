"""Writers of fixture files in the published data formats, byte layouts from the formats' specifications
(the idx format of the MNIST page, the CIFAR-10 page's binary and python versions, CelebA-like JPEGs): the tests and
`make gpu-check` write their data with them, so nothing downloads anything."""
from __future__ import annotations

import gzip
import io
import pickle
import struct
from pathlib import Path

import numpy as np

IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def idx_bytes(array: np.ndarray) -> bytes:
    """An idx file: 0, 0, type code 0x08 (uint8), ndim, each dimension big-endian int32, then the bytes."""
    assert array.dtype == np.uint8
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_mnist(folder: Path, n_train: int = 30, n_test: int = 20, *, gz: bool = True, side: int = 28) -> dict:
    """The four MNIST idx files; training image k is filled with k % 128, test image k with 128 + k % 128, so a
    test can tell the splits apart. Returns the arrays written."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {"train_x": np.stack([np.full((side, side), k % 128, np.uint8) for k in range(n_train)]),
              "train_y": rng.integers(0, 10, n_train).astype(np.uint8),
              "test_x": np.stack([np.full((side, side), 128 + k % 128, np.uint8) for k in range(n_test)]),
              "test_y": rng.integers(0, 10, n_test).astype(np.uint8)}
    for name, key in zip(IDX_NAMES, ["train_x", "train_y", "test_x", "test_y"]):
        data = idx_bytes(arrays[key])
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return arrays


def cifar_batch(n: int, seed: int, *, smooth: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """n images [n, 3072] uint8 and labels [n]: uniform noise, or (smooth) a random 4 x 4 colour grid per image,
    tinted by its label's colour and bilinearly upsampled to 32 x 32 (CIFAR-10-like statistics a classifier can learn
    something from; 50 000 images in about a second)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    if not smooth:
        return rng.integers(0, 256, (n, 3072), dtype=np.uint8), labels
    tint = np.random.default_rng(10 ** 6).uniform(-60, 60, (10, 3, 1, 1)).astype(np.float32)  # one colour per class
    pos = np.linspace(0, 3, 32)
    up = np.maximum(0, 1 - np.abs(pos[:, None] - np.arange(4)[None])).astype(np.float32)  # [32, 4] hat weights
    out = np.empty((n, 3072), np.uint8)
    for start in range(0, n, 4096):
        grid = rng.uniform(40, 215, (min(4096, n - start), 3, 4, 4)).astype(np.float32)
        grid += tint[labels[start:start + len(grid)]]
        images = up @ grid @ up.T  # [n, 3, 32, 32]
        out[start:start + len(grid)] = images.clip(0, 255).round().astype(np.uint8).reshape(len(grid), -1)
    return out, labels


def cifar_bin_bytes(data: np.ndarray, labels: np.ndarray) -> bytes:
    """Records of <1 label byte><3072 pixel bytes: 1024 red, 1024 green, 1024 blue, each 32x32 row-major>."""
    return np.concatenate([labels[:, None], data], axis=1).astype(np.uint8).tobytes()


class _Python2Pickler(pickle._Pickler):
    """Pickles str and bytes as Python 2's str (SHORT_BINSTRING / BINSTRING opcodes), as the 2009 files hold them."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_string(self, obj):
        raw = obj.encode("latin-1") if isinstance(obj, str) else obj
        head = pickle.SHORT_BINSTRING + bytes([len(raw)]) if len(raw) < 256 else \
            pickle.BINSTRING + struct.pack("<i", len(raw))
        self.write(head + raw)
        self.memoize(obj)

    dispatch[str] = dispatch[bytes] = save_string


def cifar_pickle_bytes(data: np.ndarray, labels: np.ndarray) -> bytes:
    """A python-version batch as the official files hold it: a protocol-2 Python 2 pickle of a dict (str keys, so
    bytes under encoding="bytes"), the array rebuilt by numpy.core.multiarray._reconstruct (the name the files use)."""
    batch = {b"batch_label": b"training batch 1 of 5", b"labels": [int(k) for k in labels], b"data": data,
             b"filenames": [f"img_{k}.png".encode() for k in range(len(data))]}
    out = io.BytesIO()
    _Python2Pickler(out, protocol=2).dump(batch)
    return out.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


def write_cifar10(root: Path, n: int = 8, *, version: str = "bin", smooth: bool = False) -> dict:
    """cifar-10-batches-bin/ (or -py/) under root with five training batches and a test batch of n images each
    (n = 10 000: CIFAR-10's sizes, 50 000 + 10 000); smooth: cifar_batch's smooth colour images, else noise."""
    folder = root / f"cifar-10-batches-{version}"
    folder.mkdir(parents=True, exist_ok=True)
    batches = {}
    for k, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        data, labels = batches[name] = cifar_batch(n, seed=k, smooth=smooth)
        if version == "bin":
            (folder / f"{name}.bin").write_bytes(cifar_bin_bytes(data, labels))
        else:
            (folder / name).write_bytes(cifar_pickle_bytes(data, labels))
    return batches


def write_images(folder: Path, n: int, size: tuple[int, int] = (178, 218), fmt: str = "JPEG") -> list[Path]:
    """n images of the given (width, height), each one flat colour, named like CelebA's (000001.jpg, ...)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        path = folder / f"{k + 1:06d}.{'jpg' if fmt == 'JPEG' else fmt.lower()}"
        Image.new("RGB", size, (10 * k % 256, 128, 255 - 10 * k % 256)).save(path, fmt)
        paths.append(path)
    return paths
