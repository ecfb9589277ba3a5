import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from fedcomp.config import ConfigError
from fedcomp.data import (
    DatasetNotFoundError,
    ImageData,
    client_sizes,
    load_dataset,
    partition_by_key,
    partition_indices,
)
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


@pytest.mark.parametrize(("n", "k"), [(4000, 10), (4003, 7), (11, 11), (5000, 3)])
def test_iid_is_flower_datasets_iid_partitioner_on_the_seeded_shuffle(n, k):
    """fedcomp cuts IID shards itself (no Hugging Face import in each client process); they are
    flwr-datasets' IidPartitioner's, index for index, uneven sizes included."""
    from datasets import Dataset
    from flwr_datasets.partitioner import IidPartitioner

    labels = np.arange(n) % 10
    order = np.random.default_rng(3).permutation(n)
    theirs = IidPartitioner(num_partitions=k)
    theirs.dataset = Dataset.from_dict({"label": labels[order], "idx": order})
    expected = [np.sort(np.asarray(theirs.load_partition(i)["idx"])) for i in range(k)]
    ours = partition_indices(labels, k, "iid", seed=3)
    assert [p.tolist() for p in ours] == [p.tolist() for p in expected]


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
def test_missing_dataset_names_the_folder_and_never_downloads(tmp_path, name, monkeypatch):
    from fedcomp.data import torchvision_sets

    monkeypatch.setattr(torchvision_sets, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian-package")
    with pytest.raises(DatasetNotFoundError, match="download"):
        load_dataset(name, str(tmp_path / "empty"))
    with pytest.raises(DatasetNotFoundError, match="data_dir"):
        load_dataset.__wrapped__(name, "")  # not the per-process cache: the Debian files may be loaded there


def test_missing_fashion_mnist_says_which_package_installs_it(tmp_path, monkeypatch):
    from fedcomp.data import torchvision_sets

    monkeypatch.setattr(torchvision_sets, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian-package")
    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_dataset.__wrapped__("fashion_mnist")


DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(
    not DEBIAN_FASHION.is_dir(),
    reason="Debian's dataset-fashion-mnist is not installed (`sudo apt-get install dataset-fashion-mnist`, "
    "or `make datasets`)",
)
def test_fashion_mnist_loads_offline_from_the_debian_package():
    s = load_dataset("fashion_mnist")  # no data_dir: the installed package
    assert (len(s.train), len(s.test)) == (60_000, 10_000) and s.input_shape == (1, 28, 28) and s.num_classes == 10
    assert np.bincount(s.train.labels.numpy()).tolist() == [6000] * 10
    assert np.bincount(s.test.labels.numpy()).tolist() == [1000] * 10
    # Real clothing, not digits or noise: Zalando's first training image is an ankle boot (class 9), and
    # Fashion-MNIST's pixels are far denser than MNIST's strokes.
    assert int(s.train.labels[0]) == 9 and 0.4 < float((s.train.images[:1000] > 0).float().mean()) < 0.6
    x, _ = next(s.test.batches(2000))
    assert abs(float(x.mean())) < 0.1 and abs(float(x.std()) - 1.0) < 0.1  # normalized with its own constants


def test_damaged_idx_files_are_named(tmp_path):
    from fedcomp.data.torchvision_sets import read_fashion_mnist_idx

    _write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((4, 28, 28), np.uint8))
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(4, np.uint8))
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((2, 28, 28), np.uint8))
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as fh:
        fh.write(struct.pack(">II", 0x0801, 2) + bytes([1, 2]))
    s = read_fashion_mnist_idx(tmp_path)
    assert (len(s.train), len(s.test)) == (4, 2) and s.test.labels.tolist() == [1, 2]
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(struct.pack(">II", 0x0801, 9) + b"\x01"))
    with pytest.raises(DatasetNotFoundError, match="1 bytes of data, its header says 9"):
        read_fashion_mnist_idx(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DatasetNotFoundError, match="cannot be read"):
        read_fashion_mnist_idx(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(struct.pack(">II", 0x0803, 2)))
    with pytest.raises(DatasetNotFoundError, match="not an IDX file"):
        read_fashion_mnist_idx(tmp_path)


def test_partition_by_key_groups_a_column_a_callable_and_folders(tmp_path):
    from fedcomp.data.partition import folder_keys

    parts, names = partition_by_key(["bob", "alice", "bob", "carol", "alice"])
    assert names == ["alice", "bob", "carol"] and [p.tolist() for p in parts] == [[1, 4], [0, 2], [3]]
    parts2, _ = partition_by_key(lambda i: ["bob", "alice", "bob", "carol", "alice"][i], 5)
    assert [p.tolist() for p in parts2] == [p.tolist() for p in parts]
    files = [tmp_path / "u2" / "a.png", tmp_path / "u1" / "b.png", tmp_path / "u2" / "sub" / "c.png"]
    assert folder_keys(files, tmp_path) == ["u2", "u1", "u2"]
    with pytest.raises(ValueError, match="not inside a client's folder"):
        folder_keys([tmp_path / "loose.png"], tmp_path)
    with pytest.raises(ValueError, match="one key per sample"):
        partition_by_key(["a", "b"], 3)


def test_client_sizes_summarize_the_spread():
    even = client_sizes([np.arange(10)] * 4)
    assert even["clients"] == 4 and even["samples"] == 40 and even["gini"] == pytest.approx(0.0)
    skewed = client_sizes([np.arange(1), np.arange(1), np.arange(1), np.arange(97)])
    assert skewed["max"] == 97 and skewed["median"] == 1.0 and skewed["gini"] > 0.7


def natural_loader(seed: int = 0):
    """A custom loader whose samples carry a client key (a writer id column)."""
    rng = np.random.default_rng(seed)
    writers = np.repeat(np.array(["w3", "w1", "w2"]), [5, 30, 15])
    x = rng.normal(size=(50, 4)).astype(np.float32)
    y = rng.integers(0, 2, 50)
    return {"train": (x, y), "test": (x[:10], y[:10]), "client_keys": writers}


def test_natural_partition_keeps_a_loaders_client_keys():
    from fedcomp.config import config_from_dict
    from fedcomp.data import experiment_partitions, load_experiment_data

    def cfg(partition, n):
        return config_from_dict(
            {
                "data": {"dataset": f"{__name__}:natural_loader", "partition": partition},
                "federation": {"num_clients": n},
            }
        )

    split = load_experiment_data(cfg("natural", 3))
    assert split.natural_names == ("w1", "w2", "w3")
    parts = experiment_partitions(cfg("natural", 3), split.train.labels.numpy())
    assert [len(p) for p in parts] == [30, 15, 5] and parts[2].tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ConfigError, match="natural split .* has 3 clients"):
        experiment_partitions(cfg("natural", 4), split.train.labels.numpy())
    iid = experiment_partitions(cfg("iid", 5), split.train.labels.numpy())  # the keys do not bind iid
    assert sorted(len(p) for p in iid) == [10] * 5
    with pytest.raises(ConfigError, match="carries no client key"):
        experiment_partitions(
            config_from_dict({"data": {"partition": "natural"}, "federation": {"num_clients": 3}}), LABELS
        )


def test_token_sequences_are_inputs_given_to_the_model_as_int64():
    tokens = ImageData(torch.randint(0, 80, (6, 80), dtype=torch.uint8), torch.arange(6))
    assert tokens.is_tokens and tokens.subset(np.array([1, 2])).images.dtype == torch.uint8
    x, y = next(tokens.batches(4))
    assert x.dtype == torch.int64 and x.shape == (4, 80) and y.tolist() == [0, 1, 2, 3]
    assert not load_dataset("mnist5k").train.is_tokens
    with pytest.raises(ValueError, match="integer token ids"):
        ImageData(torch.zeros(3, 2, 2, dtype=torch.int64), torch.arange(3))


def test_corrupt_cifar_file_is_reported(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / f).write_bytes(b"not a pickle")
    with pytest.raises(DatasetNotFoundError, match="not a CIFAR batch file"):
        load_dataset("cifar10", str(tmp_path))
