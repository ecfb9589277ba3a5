import pickle
import struct

import numpy as np
import pytest
import torch

from fedcomp.config import ConfigError
from fedcomp.data import DatasetNotFoundError, load_dataset, partition_indices
from fedcomp.data.embedded import read_embedded_mnist, stratified_split


def test_embedded_mnist_is_real_digits_500_per_class():
    images, labels = read_embedded_mnist()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels, minlength=10).tolist() == [500] * 10
    # Real digits: mostly background with strokes, not noise or constants.
    assert 0.1 < (images > 0).mean() < 0.3 and images.max() == 255


def test_embedded_split_is_stratified_and_seeded():
    s = load_dataset("mnist5k", test_size=1000, seed=3)
    assert len(s.train) == 4000 and len(s.test) == 1000 and s.input_shape == (1, 28, 28)
    assert np.bincount(s.test.labels.numpy()).tolist() == [100] * 10
    _, labels = read_embedded_mnist()
    a = stratified_split(labels, 1000, seed=3)
    b = stratified_split(labels, 1000, seed=3)
    c = stratified_split(labels, 1000, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[1], c[1])
    assert not set(a[0]) & set(a[1]) and len(a[0]) + len(a[1]) == 5000


def test_embedded_split_rejects_impossible_sizes():
    with pytest.raises(ConfigError, match="data.test_size"):
        load_dataset("mnist5k", test_size=4999)


def test_batches_are_normalized_and_cover_the_data():
    s = load_dataset("mnist5k")
    xs, ys = zip(*s.test.batches(300, torch.Generator().manual_seed(0)), strict=True)
    x, y = torch.cat(xs), torch.cat(ys)
    assert x.shape == (1000, 1, 28, 28) and x.dtype == torch.float32
    assert sorted(y.tolist()) == sorted(s.test.labels.tolist())
    # Standardized with the dataset's constants: mean ≈ 0 and sd ≈ 1 (pixels / 255 alone have sd ≈ 0.3).
    assert abs(float(x.mean())) < 0.1 and abs(float(x.std()) - 1.0) < 0.1


LABELS = np.repeat(np.arange(10), 400)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "pathological"])
def test_every_sample_is_used_exactly_once(scheme):
    parts = partition_indices(LABELS, 10, scheme, alpha=0.5, classes_per_client=2, seed=0)
    allidx = np.concatenate(parts)
    assert len(allidx) == len(LABELS) and len(np.unique(allidx)) == len(LABELS)
    assert all(len(p) > 0 for p in parts)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "pathological"])
def test_partitions_are_reproducible_from_the_seed(scheme):
    a = partition_indices(LABELS, 5, scheme, seed=7)
    b = partition_indices(LABELS, 5, scheme, seed=7)
    c = partition_indices(LABELS, 5, scheme, seed=8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert any(not np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def _label_skew(parts):
    """Mean total-variation distance between each client's label mix and the global one."""
    glob = np.bincount(LABELS, minlength=10) / len(LABELS)
    tv = [0.5 * np.abs(np.bincount(LABELS[p], minlength=10) / len(p) - glob).sum() for p in parts]
    return float(np.mean(tv))


def test_label_skew_grows_as_alpha_falls():
    skews = [_label_skew(partition_indices(LABELS, 10, "dirichlet", alpha=a, seed=1)) for a in (100.0, 1.0, 0.1)]
    assert skews[0] < skews[1] < skews[2]
    assert skews[0] < 0.1 and skews[2] > 0.5
    assert _label_skew(partition_indices(LABELS, 10, "iid", seed=1)) < min(0.1, skews[1])


def test_pathological_gives_each_client_c_classes():
    parts = partition_indices(LABELS, 10, "pathological", classes_per_client=2, seed=0)
    assert all(len(np.unique(LABELS[p])) == 2 for p in parts)
    with pytest.raises(ConfigError, match="classes_per_client"):
        partition_indices(LABELS, 10, "pathological", classes_per_client=11)


def test_too_many_clients_is_a_config_error():
    with pytest.raises(ConfigError, match="num_clients"):
        partition_indices(LABELS[:5], 10, "iid")


# ---------------------------------------------------------------- torchvision on-disk formats


def _write_idx(path, array: np.ndarray) -> None:
    magic = 0x0800 | array.ndim if array.dtype == np.uint8 else None
    with open(path, "wb") as fh:
        fh.write(struct.pack(">I", magic))
        fh.write(struct.pack(f">{array.ndim}I", *array.shape))
        fh.write(array.tobytes())


def _fake_mnist(root, folder, n_train=60, n_test=20):
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8))


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_torchvision_mnist_formats_read_from_data_dir(tmp_path, name, folder):
    _fake_mnist(tmp_path, folder)
    s = load_dataset(name, str(tmp_path))
    assert len(s.train) == 60 and len(s.test) == 20 and s.input_shape == (1, 28, 28) and s.num_classes == 10
    assert s.train.labels[:10].tolist() == list(range(10))


def _fake_cifar(root, classes):
    rng = np.random.default_rng(0)
    if classes == 10:
        folder = root / "cifar-10-batches-py"
        files, key = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], "labels"
    else:
        folder = root / "cifar-100-python"
        files, key = ["train", "test"], "fine_labels"
    folder.mkdir(parents=True)
    for f in files:
        n = 8
        entry = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), key: list(np.arange(n) % classes)}
        with open(folder / f, "wb") as fh:
            pickle.dump(entry, fh)


@pytest.mark.parametrize("classes", [10, 100])
def test_torchvision_cifar_formats_read_from_data_dir(tmp_path, classes):
    _fake_cifar(tmp_path, classes)
    s = load_dataset(f"cifar{classes}", str(tmp_path))
    assert s.input_shape == (3, 32, 32) and s.num_classes == classes
    assert len(s.train) == (40 if classes == 10 else 8) and len(s.test) == 8


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10", "cifar100"])
def test_missing_dataset_names_the_folder_and_never_downloads(tmp_path, name):
    with pytest.raises(DatasetNotFoundError, match="download"):
        load_dataset(name, str(tmp_path / "empty"))
    with pytest.raises(DatasetNotFoundError, match="data_dir"):
        load_dataset(name, "")


def test_corrupt_cifar_file_is_reported(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / f).write_bytes(b"not a pickle")
    with pytest.raises(DatasetNotFoundError, match="not a CIFAR batch file"):
        load_dataset("cifar10", str(tmp_path))
