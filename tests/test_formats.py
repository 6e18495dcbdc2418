"""Readers of the published data set formats (diffgen.data.formats) and the data sets built on them (diffgen.data.datasets), on
fixture files the tests write in each format."""
from __future__ import annotations

import gzip
import os
import pickle

import numpy as np
import pytest
import torch

from diffgen.data import formats
from diffgen.data.datasets import load_dataset
from diffgen.data.fixtures import (
    IDX_NAMES,
    cifar_batch,
    cifar_bin_bytes,
    cifar_pickle_bytes,
    idx_bytes,
    write_cifar10,
    write_images,
    write_mnist,
)
from diffgen.data.formats import DataFormatError


# ---------------------------------------------------------------- idx (MNIST, Fashion-MNIST)
@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, gz):
    x = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / ("a.gz" if gz else "a")
    path.write_bytes(gzip.compress(idx_bytes(x)) if gz else idx_bytes(x))
    np.testing.assert_array_equal(formats.read_idx(path), x)


def test_idx_of_other_types_is_read_big_endian(tmp_path):
    values = np.array([[1, -2], [300, 70000]], dtype=">i4")
    (tmp_path / "b").write_bytes(bytes([0, 0, 0x0C, 2]) + np.array([2, 2], ">u4").tobytes() + values.tobytes())
    out = formats.read_idx(tmp_path / "b")
    assert out.dtype == np.int32 and out.tolist() == [[1, -2], [300, 70000]]


def test_idx_errors_name_the_file(tmp_path):
    good = idx_bytes(np.zeros((3, 2, 2), np.uint8))
    cases = {"truncated": good[:-1], "trailing": good + b"\0", "header": b"\x00\x00\x08\x03\x00",
             "magic": b"\x01\x02" + good[2:], "type": b"\x00\x00\x07" + good[3:]}
    for name, raw in cases.items():
        (tmp_path / name).write_bytes(raw)
        with pytest.raises(DataFormatError, match=str(tmp_path / name)):
            formats.read_idx(tmp_path / name)
    (tmp_path / "bad.gz").write_bytes(gzip.compress(good)[:-6])  # a cut gzip stream
    with pytest.raises(DataFormatError, match="bad.gz"):
        formats.read_idx(tmp_path / "bad.gz")


def test_idx_pair_checks_labels_match_images(tmp_path):
    (tmp_path / "x").write_bytes(idx_bytes(np.zeros((3, 2, 2), np.uint8)))
    (tmp_path / "y").write_bytes(idx_bytes(np.zeros(2, np.uint8)))
    with pytest.raises(DataFormatError, match="expected 3 labels"):
        formats.read_idx_pair(tmp_path / "x", tmp_path / "y")


# ---------------------------------------------------------------- CIFAR-10
def test_cifar_binary_layout(tmp_path):
    data, labels = cifar_batch(5, seed=1)
    (tmp_path / "b.bin").write_bytes(cifar_bin_bytes(data, labels))
    x, y = formats.read_cifar10_bin(tmp_path / "b.bin")
    assert x.shape == (5, 3, 32, 32) and x.dtype == np.uint8 and y.tolist() == labels.tolist()
    # channel planes: the first 1024 bytes after the label are red, row-major
    assert x[2, 0, 1, 0] == data[2, 32] and x[2, 1, 0, 0] == data[2, 1024] and x[2, 2, 31, 31] == data[2, 3071]


def test_cifar_binary_errors(tmp_path):
    data, labels = cifar_batch(2, seed=1)
    raw = cifar_bin_bytes(data, labels)
    (tmp_path / "cut.bin").write_bytes(raw[:-10])
    with pytest.raises(DataFormatError, match="cut.bin.*whole number"):
        formats.read_cifar10_bin(tmp_path / "cut.bin")
    (tmp_path / "label.bin").write_bytes(bytes([11]) + raw[1:])
    with pytest.raises(DataFormatError, match="label.bin.*labels must lie in 0..9"):
        formats.read_cifar10_bin(tmp_path / "label.bin")


def test_cifar_python_version_equals_the_binary_version(tmp_path):
    data, labels = cifar_batch(4, seed=2)
    raw = cifar_pickle_bytes(data, labels)
    assert b"numpy.core.multiarray\n_reconstruct" in raw  # the module name of the official files
    (tmp_path / "p").write_bytes(raw)
    (tmp_path / "b.bin").write_bytes(cifar_bin_bytes(data, labels))
    for a, b in zip(formats.read_cifar10_pickle(tmp_path / "p"), formats.read_cifar10_bin(tmp_path / "b.bin")):
        np.testing.assert_array_equal(a, b)


class _RunsACommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_crafted_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    evil = pickle.dumps({b"data": _RunsACommand(marker), b"labels": []}, protocol=4)
    (tmp_path / "evil").write_bytes(evil)
    with pytest.raises(DataFormatError, match="evil.*refused to load (posix|os|nt).system"):
        formats.read_cifar10_pickle(tmp_path / "evil")
    assert not marker.exists()
    objects = pickle.dumps({b"data": np.array([None, marker], dtype=object), b"labels": [0, 0]}, protocol=4)
    (tmp_path / "objects").write_bytes(objects)
    with pytest.raises(DataFormatError, match="only uint8 arrays"):
        formats.read_cifar10_pickle(tmp_path / "objects")


def test_cifar_python_version_errors(tmp_path):
    data, labels = cifar_batch(3, seed=3)
    raw = cifar_pickle_bytes(data, labels)
    (tmp_path / "cut").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataFormatError, match="cut: not a CIFAR-10 python batch"):
        formats.read_cifar10_pickle(tmp_path / "cut")
    (tmp_path / "labels").write_bytes(cifar_pickle_bytes(data, labels[:2]))
    with pytest.raises(DataFormatError, match="`labels` must be a list of 3 ints"):
        formats.read_cifar10_pickle(tmp_path / "labels")


# ---------------------------------------------------------------- image files
def test_images_are_centre_cropped_and_resized(tmp_path):
    from PIL import Image

    im = Image.new("RGB", (40, 20), (255, 0, 0))
    im.paste((0, 0, 255), (0, 0, 10, 20))  # a blue strip at the left, outside the centred 20x20 square
    im.save(tmp_path / "a.png")
    x = formats.read_image(tmp_path / "a.png", 8)
    assert x.shape == (3, 8, 8) and x.dtype == np.uint8
    assert (x[0] == 255).all() and (x[2] == 0).all()
    assert formats.read_image(tmp_path / "a.png", 8, grayscale=True).shape == (1, 8, 8)


def test_corrupt_images_name_the_file(tmp_path):
    (tmp_path / "junk.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(DataFormatError, match="junk.jpg"):
        formats.read_image(tmp_path / "junk.jpg", 8)
    path = write_images(tmp_path / "cut", 1, (64, 64))[0]
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataFormatError, match=path.name):
        formats.read_image(path, 8)


# ---------------------------------------------------------------- data sets from a data folder
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_mnist_from_idx_files(tmp_path, name):
    write_mnist(tmp_path / name, n_train=30, n_test=20)
    ds = load_dataset(name, 10, 5, n_disjoint=8, seed=1, data_dir=tmp_path)
    assert ds.shape == (1, 28, 28) and ds.train.shape == (10, 784) and ds.disjoint.shape == (8, 784)
    assert ds.train.min() >= -1 and ds.train.max() <= 1
    level = lambda x: ((x[:, 0] + 1) * 127.5).round()  # noqa: E731: the fill value of each image
    assert (level(ds.train) < 128).all() and (level(ds.disjoint) < 128).all()  # the training split
    assert (level(ds.heldout) >= 128).all()  # the test split
    assert not set(level(ds.train).tolist()) & set(level(ds.disjoint).tolist())  # S and S' disjoint
    again = load_dataset(name, 10, 5, seed=1, data_dir=tmp_path)
    assert torch.equal(again.train, ds.train) and torch.equal(again.heldout, ds.heldout)


def test_uncompressed_idx_files_and_the_environment_variable(tmp_path, monkeypatch):
    write_mnist(tmp_path, gz=False)  # the files directly in the data folder
    monkeypatch.setenv("DIFFGEN_DATA", str(tmp_path))
    assert load_dataset("mnist", 4, 2).train.shape == (4, 784)


def test_cifar10_binary_and_python_versions_give_the_same_data_set(tmp_path):
    write_cifar10(tmp_path / "a", n=6, version="bin")
    write_cifar10(tmp_path / "b", n=6, version="py")
    a = load_dataset("cifar10", 12, 4, n_disjoint=3, seed=2, data_dir=tmp_path / "a")
    b = load_dataset("cifar10", 12, 4, n_disjoint=3, seed=2, data_dir=tmp_path / "b")
    assert a.shape == (3, 32, 32) and a.train.shape == (12, 3072)
    for x, y in [(a.train, b.train), (a.heldout, b.heldout), (a.disjoint, b.disjoint)]:
        assert torch.equal(x, y)
    with pytest.raises(ValueError, match="30 training and 6 test images"):
        load_dataset("cifar10", 12, 7, data_dir=tmp_path / "a")


def test_a_corrupt_batch_is_an_error_naming_it(tmp_path):
    write_cifar10(tmp_path, n=4)
    batch = tmp_path / "cifar-10-batches-bin" / "data_batch_3.bin"
    batch.write_bytes(batch.read_bytes()[:-1])
    with pytest.raises(DataFormatError, match="data_batch_3.bin"):
        load_dataset("cifar10", 4, data_dir=tmp_path)


def test_celeba_and_image_folders(tmp_path):
    write_images(tmp_path / "celeba" / "img_align_celeba", 12)
    ds = load_dataset("celeba", 5, 3, n_disjoint=2, seed=0, data_dir=tmp_path, image_size=16)
    assert ds.shape == (3, 16, 16) and ds.train.shape == (5, 768) and ds.disjoint.shape == (2, 768)
    rows = torch.cat([ds.train, ds.heldout, ds.disjoint])
    assert len(torch.unique(rows[:, 0])) == 10  # ten different images (each file has its own colour)
    write_images(tmp_path / "mine" / "sub", 4, (30, 30), fmt="PNG")
    assert load_dataset("folder", 3, 1, data_dir=tmp_path / "mine", image_size=8).train.shape == (3, 192)


def test_missing_or_wrong_data_folders_say_what_is_expected(tmp_path, monkeypatch):
    monkeypatch.delenv("DIFFGEN_DATA", raising=False)
    with pytest.raises(ValueError, match=r"(?s)read from local files.*DIFFGEN_DATA.*train-images-idx3-ubyte.*"
                                         r"yann.lecun.com"):
        load_dataset("mnist", 4)
    with pytest.raises(ValueError, match="is not a folder"):
        load_dataset("mnist", 4, data_dir=tmp_path / "nowhere")
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / IDX_NAMES[0]).write_bytes(b"")
    with pytest.raises(ValueError, match=r"(?s)no mnist files under.*t10k-labels-idx1-ubyte"):
        load_dataset("mnist", 4, data_dir=tmp_path)
    with pytest.raises(ValueError, match="cifar-10-batches-bin.*cs.toronto.edu"):
        load_dataset("cifar10", 4, data_dir=tmp_path)
    with pytest.raises(ValueError, match="dataset must be one of .*mnist.*folder"):
        load_dataset("imagenet", 4, data_dir=tmp_path)
