"""A flwr-datasets FederatedDataset read from local files, partitioned by Flower's Dirichlet partitioner.

    python examples/federated_dataset.py [--rounds 5] [--output-dir runs]

The example writes its own CSV files (a tabular two-class problem, 8 float
features) and reads them back through ``FederatedDataset(dataset="csv",
data_files=...)``: offline, no hub. Any dataset ``datasets.load_dataset``
reads from local files (csv, json, parquet, arrow, image folders) works the
same way. The loader hands fedcomp each client's partition as it is
(``{"clients": [...]}``), so fedcomp trains exactly Flower's split.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from torch import nn

import fedcomp

FEATURES = [f"f{i}" for i in range(8)]


def write_files(folder: Path, n: int = 3000, seed: int = 0) -> None:
    """train.csv and test.csv: label = 1 where a fixed linear score of the features is positive."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=len(FEATURES))
    x = rng.normal(size=(n, len(FEATURES)))
    table = pd.DataFrame(x, columns=FEATURES).assign(label=(x @ w > 0).astype(int))
    folder.mkdir(parents=True, exist_ok=True)
    cut = int(0.8 * n)
    table.iloc[:cut].to_csv(folder / "train.csv", index=False)
    table.iloc[cut:].to_csv(folder / "test.csv", index=False)


def load(data_dir: str, num_clients: int, alpha: float = 1.0, seed: int = 0) -> dict:
    """The files as a FederatedDataset; each Dirichlet partition becomes one client's data."""
    from flwr_datasets import FederatedDataset
    from flwr_datasets.partitioner import DirichletPartitioner

    folder = Path(data_dir)
    fds = FederatedDataset(
        dataset="csv",
        data_files={"train": str(folder / "train.csv"), "test": str(folder / "test.csv")},
        partitioners={"train": DirichletPartitioner(num_clients, partition_by="label", alpha=alpha, seed=seed)},
        cache_dir=str(folder / "hf-cache"),  # datasets' cache beside the files, not in the home folder
    )

    def arrays(part) -> tuple[np.ndarray, np.ndarray]:
        table = part.to_pandas()
        return table[FEATURES].to_numpy(np.float32), table["label"].to_numpy(np.int64)

    return {
        "clients": [arrays(fds.load_partition(i)) for i in range(num_clients)],
        "test": arrays(fds.load_split("test")),
    }


def Classifier(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:  # noqa: N802 - a model factory
    return nn.Sequential(nn.Linear(input_shape[0], 32), nn.ReLU(), nn.Linear(32, num_classes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--output-dir", default="runs")
    parser.add_argument(
        "--backend",
        choices=["ray", "in-process"],
        default="ray",
        help="where the clients run: Ray's workers, or this process (starts at once; breakpoints work)",
    )
    args = parser.parse_args()
    data_dir = Path(args.output_dir).resolve() / "federated-dataset-files"
    write_files(data_dir)
    result = fedcomp.run(
        {
            "name": "federated-dataset",
            "output_dir": args.output_dir,
            "simulation": {"backend": args.backend},
            "data": {"dataset": load, "params": {"data_dir": str(data_dir), "num_clients": 4}},
            "model": {"name": Classifier},
            "federation": {"num_clients": 4, "rounds": args.rounds},
            "client": {"local_epochs": 1, "lr": 0.05},
            "uplink": {"name": "rtopk", "density": 0.1},
        }
    )
    print(f"final accuracy {result.final_accuracy:.3f}; run directory {result.run_dir}")


if __name__ == "__main__":
    main()
