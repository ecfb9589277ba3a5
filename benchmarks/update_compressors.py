"""Uplink compressors on a ResNet-18-sized update: time against torch.topk, and bits.

An 11.2M-coordinate Laplacian update (ResNet-18's size, split into its
layer shapes) compressed at 1% density by every sparsifying compressor,
encode and decode timed in the same run as ``torch.topk`` of the same k on
the same tensor (the baseline); ``ratio_to_topk`` = (encode + decode) /
topk. Also bits per selected coordinate (whole payload, container
included). Goal for SuRP: at most 3× topk. SuRP runs three ways: the paper's
Algorithm 2 with per-layer normalization (``surp``), Algorithm 1
(``surp_alg1``) and Algorithm 2 with one global ℓ₁ norm (``surp_global``).

    python benchmarks/update_compressors.py [--quick] [--density D] [--repeat R]

Prints a table, then a JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import OrderedDict

import numpy as np
import torch

from fedcomp.coding import DecodeLimits, specs_of
from fedcomp.compressors.update import UPDATE_COMPRESSORS
from fedcomp.compressors.update.base import EncodeContext
from fedcomp.models import build_model

# (row label, registry name, parameters besides the density)
VARIANTS = (
    ("topk", "topk", {}),
    ("rtopk", "rtopk", {}),
    ("dgc", "dgc", {}),
    ("randomk", "randomk", {}),
    ("surp", "surp", {}),
    ("surp_alg1", "surp", {"algorithm": 1}),
    ("surp_global", "surp", {"normalization": "global"}),
)


def laplace_update(model_name: str, seed: int = 0) -> OrderedDict[str, torch.Tensor]:
    model = build_model(model_name, (3, 32, 32), 10)
    rng = np.random.default_rng(seed)
    return OrderedDict(
        (k, torch.from_numpy(rng.laplace(size=tuple(v.shape)).astype(np.float32)))
        for k, v in model.state_dict().items()
        if v.is_floating_point()
    )


def best(fn, repeat: int) -> tuple[float, object]:
    t_best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        t_best = min(t_best, time.perf_counter() - t0)
    return t_best, out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="ResNet-20 size (0.27M) and one repeat")
    parser.add_argument("--density", type=float, default=0.01)
    parser.add_argument("--repeat", type=int, help="timed repeats, best kept (default 3; quick 1)")
    args = parser.parse_args(argv)
    repeat = args.repeat or (1 if args.quick else 3)
    update = laplace_update("resnet20" if args.quick else "resnet18")
    n = sum(t.numel() for t in update.values())
    k = int(np.ceil(args.density * n))
    flat = torch.cat([t.reshape(-1) for t in update.values()])
    topk_s, _ = best(lambda: torch.topk(flat.abs(), k, sorted=False), repeat)
    limits = DecodeLimits.for_specs(specs_of(update))
    ctx = EncodeContext(1, 0, 10)

    rows = {}
    for label, name, extra in VARIANTS:
        cls = UPDATE_COMPRESSORS.get(name)
        params = {"density": args.density, **extra}
        comp = cls(cls.parse_params(params, "uplink"), seed=0)
        warm = comp.encode(update, {}, ctx)  # untimed: loads compiled kernels, fills caches
        comp.decode(warm.payload, limits)
        enc_s, encoded = best(lambda comp=comp: comp.encode(update, {}, ctx), repeat)
        dec_s, decoded = best(lambda comp=comp, e=encoded: comp.decode(e.payload, limits), repeat)
        if any(not torch.equal(decoded[key], encoded.sent[key]) for key in update):
            raise SystemExit(f"{label}: decoded update differs from what the encoder sent")
        selected = sum(int((v != 0).sum()) for v in decoded.values())
        rows[label] = {
            "encode_s": round(enc_s, 4),
            "decode_s": round(dec_s, 4),
            "payload_bytes": len(encoded.payload),
            "selected": selected,
            "bits_per_selected": round(8 * len(encoded.payload) / max(selected, 1), 3),
            "ratio_to_topk": round((enc_s + dec_s) / topk_s, 2),
        }

    print(f"uplink compressors: n = {n:,} Laplacian coordinates, density {args.density}, best of {repeat}")
    print(f"torch.topk baseline (k = {k:,}): {topk_s:.4f} s")
    print(f"{'method':<12}{'encode s':>10}{'decode s':>10}{'bytes':>11}{'selected':>10}{'bits/sel':>10}{'× topk':>8}")
    for name, r in rows.items():
        print(
            f"{name:<12}{r['encode_s']:>10.4f}{r['decode_s']:>10.4f}{r['payload_bytes']:>11,}"
            f"{r['selected']:>10,}{r['bits_per_selected']:>10.2f}{r['ratio_to_topk']:>8.2f}"
        )
    figures = {"n": n, "density": args.density, "topk_s": round(topk_s, 4), "compressors": rows}
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
