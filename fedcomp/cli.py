"""The ``fedcomp`` command line: ``run`` and ``list``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from fedcomp.config import ConfigError


def format_rounds_table(rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of rounds, accuracy and bytes (as the demo prints it)."""
    from fedcomp.servers.app import human_bytes

    header = ("round", "clients", "failed", "train loss", "test acc", "uplink", "downlink", "cum. uplink", "time")
    lines, cum = [], 0
    for r in rows:
        cum += r["uplink_bytes"]
        acc = "-" if r["test_accuracy"] is None else f"{r['test_accuracy']:.4f}"
        loss = "-" if r["train_loss"] is None else f"{r['train_loss']:.4f}"
        lines.append(
            (
                str(r["round"]),
                str(len(r["clients"])),
                str(r["failed_clients"]),
                loss,
                acc,
                human_bytes(r["uplink_bytes"]),
                human_bytes(r["downlink_bytes"]),
                human_bytes(cum),
                f"{r['wall_s']:.1f} s",
            )
        )
    widths = [max(len(h), *(len(row[i]) for row in lines)) if lines else len(h) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    out = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*row) for row in lines]
    return "\n".join(out)


def _cmd_run(args: argparse.Namespace) -> int:
    from fedcomp.config import load_config
    from fedcomp.simulation import run

    cfg = load_config(args.config, args.set or [])
    result = run(cfg, run_dir=args.run_dir, progress=not args.no_progress, verbose=args.verbose)
    print(format_rounds_table(result.rows))
    print(f"\nrun directory: {result.run_dir}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from fedcomp.compressors.update import UPDATE_COMPRESSORS
    from fedcomp.data import DATASETS
    from fedcomp.models import MODELS

    for title, registry in (("datasets", DATASETS), ("models", MODELS), ("uplink compressors", UPDATE_COMPRESSORS)):
        print(f"{title}:")
        for name in registry:
            print(f"  {name:<16} {registry.summary(name)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedcomp", description="Federated learning with compressed communication.")
    sub = parser.add_subparsers(dest="command", required=True)

    p_run = sub.add_parser("run", help="run one experiment from a TOML config")
    p_run.add_argument("config", help="experiment TOML file (see simulations/)")
    p_run.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config key, e.g. federation.rounds=3 (repeatable)",
    )
    p_run.add_argument("--run-dir", help="write the run here instead of a new folder under output_dir")
    p_run.add_argument("--no-progress", action="store_true", help="no progress bar")
    p_run.add_argument("-v", "--verbose", action="store_true", help="show Flower's and Ray's own logs")
    p_run.set_defaults(func=_cmd_run)

    p_list = sub.add_parser("list", help="list datasets, models and compressors")
    p_list.set_defaults(func=_cmd_list)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"fedcomp: config error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"fedcomp: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fedcomp: interrupted; finished rounds are kept in the run directory", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
