"""The GPU path: eight clients sharing one GPU, and SuRP / top-k encoding of GPU tensors against CPU ones.

Run it on a machine with a CUDA GPU (it refuses to pretend without one,
unless ``--device cpu`` asks for the CPU path, which the CI-like machines
use to check that the script itself works):

    python benchmarks/gpu.py            # ResNet-18, 8 clients at num_gpus = 0.125, 3 rounds
    python benchmarks/gpu.py --device cpu --quick   # the same code, tiny, on CPU

Three parts, all in one process tree, sized to end within 5 minutes on a
machine with a data-centre GPU and 16 cores (not yet measured on one:
none was available where it was written):

1. **Federation on the GPU**: torchvision ResNet-18 (11.2 M parameters,
   ``resnet18``) on synthetic 32×32 images (10 classes, 256 per client, a
   fixed seed), 8 clients all training every round, ``num_gpus = 0.125``
   each so that Ray packs all eight actors on the one GPU,
   ``simulation.device = "cuda"``, error-feedback SuRP at 1% up. Measured:
   seconds per round after the first, the GPU's peak memory in use and the
   number of processes on it (``nvidia-smi``, polled every 0.25 s: more
   than 8 client processes would be Ray placing too many actors), and the
   memory still in use once the run is over (Flower users report memory
   Ray never releases).
2. **The same federation on CPU** (``num_gpus = 0``, 2 CPUs per client),
   the baseline its time per round is compared with.
3. **Encoding**: SuRP and top-k at 1% of a ResNet-18-sized update
   (Laplacian values) given as GPU tensors against the same update as CPU
   tensors, the median of 5 encodes each. The codecs encode on the CPU
   (numpy kernels), so the GPU case includes the copy to the host.

Prints a table of ratios (GPU against CPU), then a JSON object as the last
line (``federation``: ``device``, ``s_per_round``, ``peak_gpu_mb``,
``gpu_processes``, ``gpu_mb_after``; ``encode``: seconds per codec and
device).

It installs what it needs from the project's own files: if ``fedcomp``
does not import, it runs ``pip install -e <this repository>`` first.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def ensure_installed() -> None:
    """fedcomp from this checkout, installed if it is not importable yet."""
    if importlib.util.find_spec("fedcomp") is None:
        print(f"installing fedcomp from {ROOT} ...", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", str(ROOT)], check=True)


class GpuMonitor:
    """Peak memory in use on GPU 0 and the most processes seen on it, from ``nvidia-smi`` in a thread."""

    def __init__(self, every_s: float = 0.25) -> None:
        self.every_s, self.peak_mb, self.processes = every_s, 0.0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    @staticmethod
    def _query(what: str) -> list[str]:
        """The non-empty lines ``nvidia-smi --query-<what> --format=csv,noheader,nounits -i 0`` prints."""
        out = subprocess.run(
            ["nvidia-smi", f"--query-{what}", "--format=csv,noheader,nounits", "-i", "0"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        return [line.strip() for line in out.splitlines() if line.strip()]

    @classmethod
    def used_mb(cls) -> float:
        return float(cls._query("gpu=memory.used")[0])

    @classmethod
    def process_count(cls) -> int:
        return len(cls._query("compute-apps=pid"))

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self.used_mb())
            self.processes = max(self.processes, self.process_count())
            self._stop.wait(self.every_s)

    def __enter__(self) -> GpuMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def synthetic_images(per_client: int = 256, clients: int = 8, test: int = 512, seed: int = 0) -> dict:
    """Random 32×32 RGB images with labels that depend on them (a class-mean pattern plus noise)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    means = rng.uniform(40, 215, size=(10, 3, 1, 1))

    def draw(n: int) -> tuple:
        y = rng.integers(0, 10, size=n)
        x = np.clip(means[y] + rng.normal(0, 50, size=(n, 3, 32, 32)), 0, 255).astype(np.uint8)
        return x, y.astype(np.int64)

    return {"train": draw(per_client * clients), "test": draw(test)}


def federation(device: str, args: argparse.Namespace, out: Path) -> dict:
    import fedcomp

    clients = args.clients
    gpu = device == "cuda"
    cfg = {
        "name": f"gpu-bench-{device}",
        "output_dir": str(out),
        "data": {"dataset": synthetic_images, "params": {"per_client": args.per_client, "clients": clients}},
        "model": {"name": args.model},
        "federation": {
            "num_clients": clients,
            "rounds": args.rounds,
            "fraction_train": 1.0,
            "min_train_clients": clients,
            "evaluate_every": 0,
        },  # fmt: skip
        "client": {"local_steps": args.steps, "batch_size": 32, "lr": 0.05},
        "uplink": {"name": "surp", "density": 0.01},
        "simulation": {"num_cpus": 1.0 if gpu else 2.0, "num_gpus": 1.0 / clients if gpu else 0.0, "device": device},
    }
    monitor = GpuMonitor() if gpu else None
    t0 = time.perf_counter()
    if monitor is not None:
        with monitor:
            rows = fedcomp.run(cfg, progress=True).rows
    else:
        rows = fedcomp.run(cfg, progress=True).rows
    walls = [r["wall_s"] for r in rows]
    result = {
        "device": device,
        "clients": clients,
        "s_per_round": statistics.mean(walls[1:]) if len(walls) > 1 else walls[0],
        "first_round_s": walls[0],
        "total_s": time.perf_counter() - t0,
        "final_accuracy": rows[-1]["test_accuracy"],
        "failed_clients": sum(r["failed_clients"] for r in rows),
    }
    if monitor is not None:
        time.sleep(2.0)  # Ray's workers exit after the run; give the driver a moment to see it
        result.update(peak_gpu_mb=monitor.peak_mb, gpu_processes=monitor.processes, gpu_mb_after=monitor.used_mb())
    return result


def encode_times(devices: list[str], numel: int, repeats: int = 5) -> dict[str, dict[str, float]]:
    """Median seconds to encode one update of ``numel`` coordinates at 1%, per codec and tensor device."""
    import numpy as np
    import torch

    from fedcomp.compressors.update import UPDATE_COMPRESSORS
    from fedcomp.compressors.update.base import EncodeContext

    rng = np.random.default_rng(0)
    host = {"w": torch.from_numpy(rng.laplace(size=numel).astype(np.float32))}
    out: dict[str, dict[str, float]] = {}
    for codec in ("surp", "topk"):
        cls = UPDATE_COMPRESSORS.get(codec)
        compressor = cls(cls.parse_params({"density": 0.01}, "uplink"), seed=0)
        for device in devices:
            update = {k: v.to(device) for k, v in host.items()}
            times = []
            for _ in range(repeats):
                if device == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                compressor.encode(update, {}, EncodeContext(1, 0, 1))
                times.append(time.perf_counter() - t0)
            out.setdefault(codec, {})[device] = statistics.median(times)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="ResNet-20, 2 clients, 2 rounds: checks the script")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    args.model, args.clients, args.per_client, args.steps = "resnet18", 8, 256, 5
    numel = 11_173_962  # ResNet-18's parameters
    if args.quick:
        args.model, args.clients, args.per_client, args.steps, args.rounds = "resnet20", 2, 64, 2, 2
        numel = 272_474

    ensure_installed()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA GPU here: run it on a machine with one (or --device cpu to check the script)")
    if args.device == "cuda" and shutil.which("nvidia-smi") is None:
        sys.exit("nvidia-smi is not on PATH: it is how this benchmark reads the GPU's memory")

    with tempfile.TemporaryDirectory() as tmp:
        runs = [federation(args.device, args, Path(tmp))]
        if args.device == "cuda":
            runs.append(federation("cpu", args, Path(tmp)))
    devices = ["cpu", "cuda"] if args.device == "cuda" else ["cpu"]
    encode = encode_times(devices, numel)

    print(f"\n{args.model}, {args.clients} clients, {args.steps} local steps of 32, SuRP 1% up")
    print(f"{'run':<12}{'s/round':>10}{'vs cpu':>9}{'peak GPU MB':>13}{'GPU procs':>11}{'GPU MB after':>14}")
    cpu_s = next(r["s_per_round"] for r in runs if r["device"] == "cpu")
    for r in runs:
        print(f"{r['device']:<12}{r['s_per_round']:>10.2f}{r['s_per_round'] / cpu_s:>9.2f}"
              f"{r.get('peak_gpu_mb', 0):>13.0f}{r.get('gpu_processes', 0):>11}{r.get('gpu_mb_after', 0):>14.0f}")  # fmt: skip
    print(f"\nencoding {numel:,} coordinates at 1% (median of 5)")
    print(
        f"{'codec':<8}"
        + "".join(f"{d + ' s':>12}" for d in devices)
        + (f"{'cuda/cpu':>10}" if len(devices) > 1 else "")
    )
    for codec, by_device in encode.items():
        ratio = f"{by_device['cuda'] / by_device['cpu']:>10.2f}" if "cuda" in by_device else ""
        print(f"{codec:<8}" + "".join(f"{by_device[d]:>12.3f}" for d in devices) + ratio)
    result = {"model": args.model, "federation": runs, "encode": encode, "numel": numel}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
