"""Does an adaptive Golomb parameter pay for iterative SuRP's skips? Measured on real updates.

Iterative SuRP (``mode = "iterative"``) sends one symbol per iteration:
the skip + 1 to the next candidate in the shared order, or 0 for a
refresh. Skips are geometric with p = |candidates|/n, and the pool of
candidates changes within a payload: it shrinks as picks use it up and a
refresh restores about β. The payload codes every symbol with one Golomb
parameter M fitted to their mean (sent, Elias-δ). This script measures
what two adaptive codes would save, bit-exact (each code written by the payload's own
Golomb and Elias coders and its length counted):

- ``per_refresh``: one M per stretch between refreshes, fitted to that
  stretch and sent (Elias-γ, its side information counted);
- ``backward``: no side information; each symbol's M from a running mean
  of the skips before it (exponential, weight 1/16), restarted at
  n/β after every refresh, which a decoder can follow exactly.

Sources: Laplacian data in LeNet-5-Caffe's shapes, a real LeNet-5 client
update and its error-feedback vector (``benchmarks/rate_distortion.py``'s
capture: 30 FedSGD rounds on the embedded digits), at densities 0.1% and
1%, with the global and the per-layer normalization. Prints the skip bits
of each code, the ratio to the fixed code (< 1 saves), the share of the
whole payload the saving is, and a JSON last line.

    python benchmarks/surp_skip_coding.py [--rounds R]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rate_distortion import laplace_source, training_sources  # noqa: E402

from fedcomp.coding import BitWriter, elias_delta_encode, elias_gamma_encode, golomb_encode  # noqa: E402
from fedcomp.coding.codes import golomb_parameter_for, golomb_parameter_from_mean  # noqa: E402
from fedcomp.compressors.update.surp import SurpParams, run_encoder, write_stream  # noqa: E402

DENSITIES = (0.001, 0.01)
EMA_WEIGHT = 1.0 / 16


def golomb_bits(x: np.ndarray, m: np.ndarray | int) -> int:
    """Total length of the Golomb codes of ``x`` with parameter(s) ``m``, as the payload's own coder writes them.

    Each symbol's code depends only on it and its M, so symbols are coded in groups of equal M.
    """
    x = np.asarray(x, dtype=np.int64)
    ms = np.broadcast_to(np.asarray(m, dtype=np.int64), x.shape)
    return sum(golomb_encode(x[ms == value], int(value), BitWriter()).nbits for value in np.unique(ms))


def elias_gamma_bits(v: int) -> int:
    return elias_gamma_encode([int(v)], BitWriter()).nbits


def elias_delta_bits(v: int) -> int:
    return elias_delta_encode([int(v)], BitWriter()).nbits


def fixed_code(symbols: np.ndarray) -> int:
    m = golomb_parameter_for(symbols)
    return golomb_bits(symbols, m) + elias_delta_bits(m)


def per_refresh_code(symbols: np.ndarray) -> int:
    bits = 0
    for stretch in np.split(symbols, np.flatnonzero(symbols == 0) + 1):  # a refresh ends its stretch
        if stretch.size:
            m = golomb_parameter_for(stretch)
            bits += golomb_bits(stretch, m) + elias_gamma_bits(m)
    return bits


def backward_code(symbols: np.ndarray, start_mean: float) -> int:
    ms = np.empty(symbols.size, dtype=np.int64)
    mean = start_mean
    for i, s in enumerate(symbols.tolist()):
        ms[i] = golomb_parameter_from_mean(mean)
        mean = start_mean if s == 0 else (1 - EMA_WEIGHT) * mean + EMA_WEIGHT * s
    return golomb_bits(symbols, ms)


def measure(source: dict[str, torch.Tensor], density: float, normalization: str) -> dict:
    flats = [v.reshape(-1).numpy().astype(np.float64) for v in source.values()]
    params = SurpParams(density=density, mode="iterative", normalization=normalization)
    stream, _, _, stats = run_encoder(flats, params, seed=1)
    symbols = np.asarray(stream.symbols, dtype=np.int64)
    n = sum(f.size for f in flats)
    beta = math.log(n)
    fixed = fixed_code(symbols)
    return {
        "symbols": int(symbols.size),
        "refreshes": int(np.count_nonzero(symbols == 0)),
        "payload_bits": 8 * len(write_stream(stream)),
        "fixed_bits": fixed,
        "per_refresh_bits": per_refresh_code(symbols),
        "backward_bits": backward_code(symbols, n / beta),
        "iterations": stats["iterations"],
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30, help="FedSGD rounds before the update is captured")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    sources = {"laplace": laplace_source(0), **training_sources(args.rounds)}
    rows = []
    header = f"{'source':<9}{'norm':<8}{'density':>8}{'symbols':>9}{'refr.':>7}{'fixed':>9}"
    print(header + f"{'per-refresh':>13}{'ratio':>7}{'backward':>10}{'ratio':>7}{'best saves':>12}")
    for name, source in sources.items():
        for normalization in ("global", "layer"):
            for density in DENSITIES:
                r = measure(source, density, normalization)
                best = min(r["per_refresh_bits"], r["backward_bits"])
                r.update(
                    source=name,
                    normalization=normalization,
                    density=density,
                    per_refresh_ratio=r["per_refresh_bits"] / r["fixed_bits"],
                    backward_ratio=r["backward_bits"] / r["fixed_bits"],
                    best_saving_of_payload=(r["fixed_bits"] - best) / r["payload_bits"],
                )
                rows.append(r)
                print(
                    f"{name:<9}{normalization:<8}{density:>8.3f}{r['symbols']:>9}{r['refreshes']:>7}"
                    f"{r['fixed_bits']:>9}{r['per_refresh_bits']:>13}{r['per_refresh_ratio']:>7.3f}"
                    f"{r['backward_bits']:>10}{r['backward_ratio']:>7.3f}{r['best_saving_of_payload']:>11.1%}"
                )
    print(json.dumps({"rows": rows}))
    return {"rows": rows}


if __name__ == "__main__":
    main(sys.argv[1:])
