"""torchvision's MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100 from a data_dir; Fashion-MNIST from Debian.

Files are read in torchvision's own on-disk layout (``MNIST/raw/*-ubyte``,
``cifar-10-batches-py/``, ...). Nothing is downloaded unless
``data.download = true``; then torchvision fetches the files.
Fashion-MNIST without a ``data_dir`` is read from Debian's
``dataset-fashion-mnist`` package (``apt-get install dataset-fashion-mnist``:
Zalando's own gzipped IDX files in ``/usr/share/datasets/fashion-mnist``),
which works offline wherever a Debian mirror is reachable at install time. CIFAR batches
are read directly (the pickled dicts torchvision reads) so a local copy is
not rejected for lacking the official MD5 sums — with an unpickler that
builds only what a batch holds (builtin containers and numpy arrays): a
pickle can name any function to call while it loads, and a data file must
not run code (:class:`CifarUnpickler`).
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path

import numpy as np
import torch

from fedcomp.data.base import DATASETS, DatasetNotFoundError, ImageData, SplitData

_NUMPY_CORE = getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core (pickles name either)

_CIFAR_MEAN = {10: (0.4914, 0.4822, 0.4465), 100: (0.5071, 0.4865, 0.4409)}
_CIFAR_STD = {10: (0.2470, 0.2435, 0.2616), 100: (0.2673, 0.2564, 0.2762)}


def _root(data_dir: str, name: str) -> Path:
    if not data_dir:
        raise DatasetNotFoundError(f"dataset {name!r} needs 'data.data_dir' (a folder holding it, or to download into)")
    return Path(data_dir).expanduser()


def _load_mnist_like(cls_name: str, name: str, mean: float, std: float, data_dir: str, download: bool) -> SplitData:
    import torchvision.datasets as tvd

    root = _root(data_dir, name)
    cls = getattr(tvd, cls_name)
    try:
        train, test = (cls(str(root), train=t, download=download) for t in (True, False))
    except RuntimeError as exc:  # torchvision: "Dataset not found. You can use download=True ..."
        raise DatasetNotFoundError(
            f"dataset {name!r} not found under {root / cls_name / 'raw'}: {exc} "
            "(set data.download = true to fetch it, online)"
        ) from None
    parts = [
        ImageData(
            torch.as_tensor(d.data).unsqueeze(1).to(torch.uint8), torch.as_tensor(d.targets).long(), (mean,), (std,)
        )
        for d in (train, test)
    ]
    return SplitData(name, parts[0], parts[1], num_classes=10)


@DATASETS.register("mnist", "torchvision MNIST (60k/10k) from data.data_dir")
def load_mnist(data_dir: str, download: bool, test_size: int, seed: int) -> SplitData:
    return _load_mnist_like("MNIST", "mnist", 0.1307, 0.3081, data_dir, download)


DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` puts Zalando's four ``*-ubyte.gz`` files."""
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_FASHION_MEAN, _FASHION_STD = 0.2860, 0.3530


def read_idx(path: Path, dims: int, limit: int = 1 << 28) -> np.ndarray:
    """An IDX file of unsigned bytes (LeCun's MNIST format), gzipped or not, as a uint8 array.

    The header is checked before the body is read: magic ``0x0000 08 dims``,
    then ``dims`` big-endian sizes whose product must equal the body's length
    (at most ``limit`` bytes), so a damaged file is an error, never a wrong
    shape or an unbounded read.
    """
    import gzip
    import struct

    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            head = fh.read(4 + 4 * dims)
            if len(head) < 4 + 4 * dims:
                raise DatasetNotFoundError(f"{path} is not an IDX file: it ends inside its header")
            magic = struct.unpack(">I", head[:4])[0]
            if magic != 0x0800 | dims:
                raise DatasetNotFoundError(
                    f"{path} is not an IDX file of uint8 with {dims} dimension(s) (magic {magic:#010x})"
                )
            shape = struct.unpack(f">{dims}I", head[4:])
            size = int(np.prod(shape, dtype=np.int64))
            if size > limit:
                raise DatasetNotFoundError(f"{path}: its header claims {size} bytes, more than the {limit} allowed")
            body = fh.read(size + 1)
    except DatasetNotFoundError:
        raise  # the checks above (an OSError too): their own message
    except (OSError, EOFError) as exc:  # gzip's BadGzipFile is an OSError
        if isinstance(exc, FileNotFoundError):
            raise DatasetNotFoundError(f"missing file {path}") from None
        raise DatasetNotFoundError(f"{path} cannot be read: {exc}") from None
    if len(body) != size:
        raise DatasetNotFoundError(f"{path}: {len(body)} bytes of data, its header says {size}")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def _idx_file(folder: Path, name: str) -> Path:
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.exists():
            return candidate
    return folder / f"{name}.gz"


def read_fashion_mnist_idx(folder: Path) -> SplitData:
    """Fashion-MNIST from a folder of Zalando's IDX files (``*-ubyte`` or ``*-ubyte.gz``)."""
    parts = []
    for images_name, labels_name in FASHION_MNIST_FILES.values():
        x = read_idx(_idx_file(folder, images_name), 3)
        y = read_idx(_idx_file(folder, labels_name), 1)
        if len(x) != len(y):
            raise DatasetNotFoundError(f"{folder}: {len(x)} images but {len(y)} labels in {images_name}/{labels_name}")
        if len(y) and int(y.max()) > 9:
            raise DatasetNotFoundError(
                f"{folder}: a label {int(y.max())} in {labels_name}; Fashion-MNIST has 10 classes"
            )
        parts.append(
            ImageData(
                torch.from_numpy(x.copy()).unsqueeze(1),
                torch.from_numpy(y.astype(np.int64)),
                (_FASHION_MEAN,),
                (_FASHION_STD,),
            )
        )
    return SplitData("fashion_mnist", parts[0], parts[1], num_classes=10)


@DATASETS.register(
    "fashion_mnist",
    "Fashion-MNIST (60k/10k): Debian's dataset-fashion-mnist offline, or torchvision's layout from data.data_dir",
)
def load_fashion_mnist(data_dir: str, download: bool, test_size: int, seed: int) -> SplitData:
    """Zalando's Fashion-MNIST (Xiao et al. 2017): torchvision's layout under ``data.data_dir`` when it is set
    (``data.download`` fetches it there, online); else Debian's ``dataset-fashion-mnist`` files."""
    if data_dir:
        return _load_mnist_like("FashionMNIST", "fashion_mnist", _FASHION_MEAN, _FASHION_STD, data_dir, download)
    if not DEBIAN_FASHION_MNIST.is_dir():
        raise DatasetNotFoundError(
            f"dataset 'fashion_mnist' is not installed: `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu; "
            f"or `make datasets`) puts it in {DEBIAN_FASHION_MNIST}; or set data.data_dir to a folder in "
            "torchvision's layout (FashionMNIST/raw/*-ubyte; data.download = true fetches it there, online)"
        )
    return read_fashion_mnist_idx(DEBIAN_FASHION_MNIST)


class CifarUnpickler(pickle.Unpickler):
    """Loads a CIFAR batch (a dict of lists, strings and numpy arrays) and nothing that could run code.

    A pickle calls whatever globals it names while it loads; this one resolves only numpy's array and
    scalar reconstruction (``_reconstruct``, ``scalar``, ``ndarray``, ``dtype``) and the ``_codecs.encode``
    that Python 3 pickles of bytes use. Any other global is an ``UnpicklingError`` before it is called.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _NUMPY_CORE.multiarray._reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _NUMPY_CORE.multiarray._reconstruct,
        # numpy scalars (labels re-saved as numpy integers): a dtype and its raw bytes
        ("numpy.core.multiarray", "scalar"): _NUMPY_CORE.multiarray.scalar,
        ("numpy._core.multiarray", "scalar"): _NUMPY_CORE.multiarray.scalar,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }

    def find_class(self, module: str, name: str) -> object:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"it names {module[:60]}.{name[:60]}, which a CIFAR batch never does (refused before it is called: it could "
                "run code)"
            ) from None


def read_cifar_batches(folder: Path, files: list[str], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels from torchvision's CIFAR pickles (see :class:`CifarUnpickler`)."""
    xs, ys = [], []
    for fname in files:
        path = folder / fname
        try:
            with path.open("rb") as fh:
                entry = CifarUnpickler(fh, encoding="latin1").load()
        except FileNotFoundError:
            raise DatasetNotFoundError(f"missing CIFAR file {path}") from None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
            # What a damaged or foreign pickle raises inside the allowed constructors, too.
            raise DatasetNotFoundError(f"{path} is not a CIFAR batch file: {exc}") from None
        if not isinstance(entry, dict):
            raise DatasetNotFoundError(
                f"{path} is not a CIFAR batch file: it holds a {type(entry).__name__}, not a dict"
            )
        try:
            data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            labels = np.asarray(entry[label_key], dtype=np.int64)
        except (KeyError, ValueError, TypeError) as exc:
            raise DatasetNotFoundError(f"{path} lacks CIFAR fields 'data'/{label_key!r}: {exc}") from None
        if len(labels) != len(data):
            raise DatasetNotFoundError(f"{path}: {len(data)} images but {len(labels)} labels")
        xs.append(data)
        ys.append(labels)
    return np.concatenate(xs), np.concatenate(ys)


def _load_cifar(classes: int, data_dir: str, download: bool) -> SplitData:
    name = f"cifar{classes}"
    root = _root(data_dir, name)
    folder = root / ("cifar-10-batches-py" if classes == 10 else "cifar-100-python")
    if download and not folder.exists():
        import torchvision.datasets as tvd

        getattr(tvd, f"CIFAR{classes}")(str(root), train=True, download=True)
    if not folder.exists():
        raise DatasetNotFoundError(
            f"dataset {name!r} not found: no folder {folder} (set data.download = true to fetch it, online)"
        )
    if classes == 10:
        train_files, test_files, key = [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels"
    else:
        train_files, test_files, key = ["train"], ["test"], "fine_labels"
    mean, std = _CIFAR_MEAN[classes], _CIFAR_STD[classes]
    parts = []
    for files in (train_files, test_files):
        x, y = read_cifar_batches(folder, files, key)
        parts.append(ImageData(torch.from_numpy(x), torch.from_numpy(y), mean, std))
    return SplitData(name, parts[0], parts[1], num_classes=classes)


@DATASETS.register("cifar10", "torchvision CIFAR-10 (50k/10k) from data.data_dir")
def load_cifar10(data_dir: str, download: bool, test_size: int, seed: int) -> SplitData:
    return _load_cifar(10, data_dir, download)


@DATASETS.register("cifar100", "torchvision CIFAR-100 (50k/10k) from data.data_dir")
def load_cifar100(data_dir: str, download: bool, test_size: int, seed: int) -> SplitData:
    return _load_cifar(100, data_dir, download)
