"""Uplink compressors on a ResNet-18-sized update: time against torch.topk, and bits.

An 11.2M-coordinate Laplacian update (ResNet-18's size, split into its
layer shapes) compressed at 1% density by every sparsifying compressor,
encode and decode timed in the same run as ``torch.topk`` of the same k on
the same tensor (the baseline); ``ratio_to_topk`` = (encode + decode) /
topk. Also bits per selected coordinate (whole payload, container
included). SuRP runs four ways: its default, the staged form (``surp``),
whose targets are at most 1.5× topk and at most log₂(n/k) + 3 bits per
nonzero (both reported under ``targets`` in the JSON); the iterative
Algorithm 2 with one global ℓ₁ norm (``surp_iterative``), with the paper's
per-layer norms (``surp_layer``), and Algorithm 1 (``surp_alg1``, global).
The identity codec (dense fp32) is the reference row.

**Output checks.** ``decode`` checks what it decoded (finite, within
``max_abs``, the specs' shapes and dtypes). ``unchecked s`` is the decode
without them (container parse + ``decode_body``), ``check s`` the checks
alone (best of at least 7: a pass over every decoded tensor, or for the
codecs that bound their own values, the sparse ones and SuRP, the values
that can be nonzero; see :func:`output_checks`), and ``check %`` = check /
unchecked decode. Goal: under 5%. The JSON
also has ``decode_checked_s``, the whole checked decode (with the noise of
two separate timings).

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

from fedcomp.coding import DecodeLimits, check_decoded, specs_of, unpack, values_within
from fedcomp.compressors.update import UPDATE_COMPRESSORS
from fedcomp.compressors.update.base import EncodeContext
from fedcomp.compressors.update.surp import picked_within
from fedcomp.models import build_model

# (row label, registry name, parameters besides the density)
VARIANTS = (
    ("identity", "identity", {}),
    ("topk", "topk", {}),
    ("rtopk", "rtopk", {}),
    ("dgc", "dgc", {}),
    ("randomk", "randomk", {}),
    ("surp", "surp", {}),
    ("surp_iterative", "surp", {"mode": "iterative"}),
    ("surp_layer", "surp", {"mode": "iterative", "normalization": "layer"}),
    ("surp_alg1", "surp", {"mode": "iterative", "algorithm": 1}),
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


def unchecked_decode(comp, payload: bytes, limits: DecodeLimits) -> dict[str, torch.Tensor]:
    """``decode`` without its output checks: the container, then the body (own checks at max_abs = inf)."""
    parsed = unpack(payload, limits)
    return comp.decode_body(parsed.params, parsed.specs, parsed.body)


def output_checks(comp, decoded: dict[str, torch.Tensor], limits: DecodeLimits):
    """The checks ``decode`` adds, as a call to time alone (its inputs prepared untimed).

    Generic codecs: one pass over every decoded tensor. Those that bound
    their own values check only what can be nonzero, as their decoders do:
    the sparse codecs the k values they read (one tensor), SuRP the picked
    coordinates (:func:`~fedcomp.compressors.update.surp.picked_within`).
    Every codec also gets the spec check (names, shapes, dtypes).
    """
    specs = limits.expected
    if not comp.bounds_own_values:
        return lambda: check_decoded(decoded, specs, 1e6)
    flat = torch.cat([t.reshape(-1) for t in decoded.values()])
    if comp.name == "surp" and comp.params.mode == "iterative":
        recon, picked = flat.double().numpy(), np.flatnonzero(flat.numpy())
        norms = np.ones(len(specs), np.float32)
        return lambda: (
            check_decoded(decoded, specs, 1e6, values=False),
            picked_within(list(specs), norms, recon, picked, 1e6),
        )
    values = flat[flat != 0]
    return lambda: (check_decoded(decoded, specs, 1e6, values=False), values_within(values, 1e6))


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
    checked = DecodeLimits.for_specs(specs_of(update), max_abs=1e6)  # the server's default bound
    ctx = EncodeContext(1, 0, 10)

    rows = {}
    for label, name, extra in VARIANTS:
        cls = UPDATE_COMPRESSORS.get(name)
        params = {"density": args.density, **extra} if name != "identity" else {}
        comp = cls(cls.parse_params(params, "uplink"), seed=0)
        warm = comp.encode(update, {}, ctx)  # untimed: loads compiled kernels, fills caches
        comp.decode(warm.payload, limits)
        enc_s, encoded = best(lambda comp=comp: comp.encode(update, {}, ctx), repeat)
        dec_s, decoded = best(lambda comp=comp, e=encoded: comp.decode(e.payload, limits), repeat)
        if any(not torch.equal(decoded[key], encoded.sent[key]) for key in update):
            raise SystemExit(f"{label}: decoded update differs from what the encoder sent")
        timed = max(repeat, 7)
        chk_s, _ = best(lambda comp=comp, e=encoded: comp.decode(e.payload, checked), timed)
        raw_s, _ = best(lambda comp=comp, e=encoded: unchecked_decode(comp, e.payload, limits), timed)
        check_s, _ = best(output_checks(comp, decoded, limits), timed)
        selected = sum(int((v != 0).sum()) for v in decoded.values())
        rows[label] = {
            "encode_s": round(enc_s, 4),
            "decode_s": round(dec_s, 4),
            "payload_bytes": len(encoded.payload),
            "selected": selected,
            "bits_per_selected": round(8 * len(encoded.payload) / max(selected, 1), 3),
            "ratio_to_topk": round((enc_s + dec_s) / topk_s, 2),
            "decode_unchecked_s": round(raw_s, 4),
            "check_s": round(check_s, 5),
            "decode_checked_s": round(chk_s, 4),
            "check_pct": round(100 * check_s / raw_s, 2),
        }

    print(f"uplink compressors: n = {n:,} Laplacian coordinates, density {args.density}, best of {repeat}")
    print(f"torch.topk baseline (k = {k:,}): {topk_s:.4f} s")
    print(
        f"{'method':<12}{'encode s':>10}{'decode s':>10}{'bytes':>12}{'selected':>12}{'bits/sel':>10}{'× topk':>8}"
        f"{'unchecked s':>13}{'check s':>10}{'check %':>9}"
    )
    for name, r in rows.items():
        print(
            f"{name:<12}{r['encode_s']:>10.4f}{r['decode_s']:>10.4f}{r['payload_bytes']:>12,}"
            f"{r['selected']:>12,}{r['bits_per_selected']:>10.2f}{r['ratio_to_topk']:>8.2f}"
            f"{r['decode_unchecked_s']:>13.4f}{r['check_s']:>10.5f}{r['check_pct']:>9.2f}"
        )
    surp = rows["surp"]
    targets = {
        "ratio_to_topk": {"measured": surp["ratio_to_topk"], "at_most": 1.5},
        "bits_per_selected": {"measured": surp["bits_per_selected"], "at_most": round(float(np.log2(n / k)) + 3, 3)},
    }
    for t in targets.values():
        t["met"] = t["measured"] <= t["at_most"]
    print(
        f"SuRP (staged, the default) against its targets: {surp['ratio_to_topk']:.2f}× topk (≤ 1.5), "
        f"{surp['bits_per_selected']:.2f} bits per nonzero (≤ log2(n/k) + 3 = {targets['bits_per_selected']['at_most']})"
    )
    figures = {"n": n, "density": args.density, "topk_s": round(topk_s, 4), "compressors": rows, "targets": targets}
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
