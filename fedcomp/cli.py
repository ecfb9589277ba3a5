"""The ``fedcomp`` command line: ``run``, ``sweep``, ``report``, ``submit``, ``list`` and ``init``.

Importing this module imports neither torch nor Flower (each command
imports what it needs, inside its function), so ``--help`` and ``list`` answer at once.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedcomp.config import ConfigError, apply_overrides, config_from_dict, load_config
from fedcomp.errors import ReportError, RunFailedError, RunInterruptedError


def format_rounds_table(rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of rounds, accuracy and bytes (as the demo prints it)."""
    from fedcomp.servers.app import human_bytes

    # Regression (float targets) has no accuracy: the test loss (MSE) is the column then.
    by_loss = all(r["test_accuracy"] is None for r in rows) and any(r.get("test_loss") is not None for r in rows)
    key, title = ("test_loss", "test loss") if by_loss else ("test_accuracy", "test acc")
    header = ("round", "clients", "failed", "train loss", title, "uplink", "downlink", "cum. uplink", "time")
    lines, cum = [], 0
    for r in rows:
        cum += r["uplink_bytes"]
        acc = "-" if r.get(key) is None else f"{r[key]:.4f}"
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
    from fedcomp.simulation import resume, run

    if args.resume:
        if args.config or args.set or args.run_dir:
            raise ConfigError("--resume RUN_DIR takes the run's own config.toml: give no CONFIG, --set or --run-dir")
        result = resume(args.resume, progress=not args.no_progress, verbose=args.verbose, trust_code=args.trust_code)
    else:
        if args.trust_code:
            raise ConfigError("--trust-code goes with --resume RUN_DIR; a config you run yourself may import its code already")  # fmt: skip
        cfg = load_config(args.config, args.set or []) if args.config else _defaults(args.set or [])
        result = run(cfg, run_dir=args.run_dir, progress=not args.no_progress, verbose=args.verbose)
    print(format_rounds_table(result.rows))
    print(f"\nrun directory: {result.run_dir}")
    if args.report:
        _print_report([result.run_dir], Path(result.run_dir) / "report", None, False)
    return 0


def _defaults(overrides: list[str]) -> Any:
    """``fedcomp run`` with no CONFIG: every key at its default, then the ``--set`` overrides."""
    return config_from_dict(apply_overrides({}, overrides))


def _cmd_sweep(args: argparse.Namespace) -> int:
    from fedcomp.sweep import parse_grid, run_sweep

    result = run_sweep(
        args.config,
        parse_grid(args.grid or []),
        seeds=args.seeds,
        overrides=args.set or [],
        sweep_dir=args.sweep_dir,
        progress=not args.no_progress,
        verbose=args.verbose,
    )
    print(f"sweep directory: {result.sweep_dir}")
    for r in result.runs:
        acc = "" if r.final_accuracy is None else f"  final accuracy {r.final_accuracy:.4f}"
        print(f"  {r.status:<9} {r.dir}{acc}" + (f"  ({r.error})" if r.error else ""))
    if args.report:
        _print_report([result.sweep_dir], Path(result.sweep_dir) / "report", args.target, False, args.budget)
    return 1 if result.failed else 0


REPORT_EPILOG = """\
exit status: 0 the report is written (damaged run files are named on stderr as
warnings and marked in the report; every intact row is used); 2 nothing could be
reported (not a run or sweep directory, different experiments, an unwritable OUT).
"""


def _cmd_report(args: argparse.Namespace) -> int:
    _print_report(args.paths, Path(args.output), args.target, args.allow_mixed, args.budget)
    return 0


def _print_report(
    paths: Sequence[str | Path],
    out: Path,
    target: Sequence[float] | None,
    allow_mixed: bool,
    budgets: Sequence[float] | None = None,
) -> None:
    from fedcomp.reports import make_report

    try:
        report = make_report(list(paths), out, target=target, allow_mixed=allow_mixed, budgets=budgets)
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        raise ReportError(f"cannot write the report{where}: {exc.strerror or exc}") from exc
    for warning in report.warnings:
        print(f"fedcomp: warning: {warning}", file=sys.stderr)
    print(f"\nreport: {report.html}")
    print(f"        {report.markdown}, {report.csv.name}, {report.json.name}, figures/ in {report.out_dir}")
    if report.warnings:
        print(f"        {len(report.warnings)} warnings about damaged run files (listed above and in the report)")
    if report.headline is not None:
        for line in report.headline.lines():
            print(f"  {line}")


def _byte_budget(text: str) -> float:
    from fedcomp.reports.units import parse_bytes

    try:
        return parse_bytes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


TARGET_HELP = (
    "target accuracy (repeatable: the headline answers each, the table uses the first; default: the lower "
    "median of the groups' mean final accuracies, rounded down to 0.01)"
)
BUDGET_HELP = (
    "a budget of total bytes, both directions, for the headline, e.g. 10MB (repeatable; default: each method's total)"
)


def _cmd_list(args: argparse.Namespace) -> int:
    """Every method with its whole description and its parameters (from the catalogue: no torch import)."""
    import textwrap

    from fedcomp.catalogue import load

    for family in load()["families"]:
        print(f"{family['title']}:")
        for entry in family["entries"]:
            lines = textwrap.wrap(entry["description"], 100 - 19) or [""]
            print(f"  {entry['name']:<16} {lines[0]}")
            for line in lines[1:]:
                print(" " * 19 + line)
            _print_params([f"{k} = {v}" for k, v in entry["params"]])
    return 0


def _print_params(items: list[str]) -> None:
    """Parameters under their method, wrapped to 100 columns between parameters (never inside one)."""
    line = ""
    for item in items:
        if line and 21 + len(line) + 2 + len(item) + 1 > 100:  # + the comma that ends a wrapped line
            print(" " * 21 + line + ",")
            line = ""
        line = f"{line}, {item}" if line else item
    if line:
        print(" " * 21 + line)


def _cmd_init(args: argparse.Namespace) -> int:
    """Copy a packaged config (or, with --flower-app, the Flower app template) to edit; never over a file."""
    from fedcomp.configs import packaged_config

    if args.flower_app:
        from fedcomp.templates import copy_flower_app

        if args.name or args.dest:
            raise ConfigError("fedcomp init --flower-app DIR takes no config name")
        dest = copy_flower_app(args.flower_app)
        print(f"wrote a Flower app with fedcomp's compression to {dest}: cd {dest} && flwr run .")
        return 0
    if not args.name:
        raise ConfigError("fedcomp init NAME [DEST] (a packaged config, see fedcomp list) or --flower-app DIR")
    source = packaged_config(args.name)
    dest = Path(args.dest) if args.dest else Path(f"{args.name}.toml")
    if dest.is_dir():
        dest = dest / source.name
    if dest.exists():
        raise ConfigError(f"{dest} exists; give another destination (fedcomp init {args.name} DEST)")
    dest.write_bytes(source.read_bytes())
    print(f"wrote {dest}: edit it, then: fedcomp run {dest}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from fedcomp.compare import compare, parse_method
    from fedcomp.servers.app import human_bytes
    from fedcomp.sweep import parse_grid

    result = compare(
        args.config,
        [parse_method(m) for m in args.method],
        tune=parse_grid(args.tune or []),
        seeds=args.seeds,
        tune_seeds=args.tune_seeds,
        target=args.target,
        overrides=args.set or [],
        out_dir=args.out,
        progress=not args.no_progress,
    )
    print(f"compare directory: {result.out_dir} (target accuracy {result.target})")
    for m in result.methods:
        chosen = ", ".join(f"{k}={v}" for k, v in m.chosen.items()) or "nothing tuned"
        reached = [b for b in m.to_target["total_bytes"] if b is not None]
        mean = human_bytes(sum(reached) / len(reached)) if reached else "—"
        diff = m.paired["total_bytes"]
        vs = ""
        if m is not result.methods[0] and diff["ci95"] is not None:
            lo, hi = diff["ci95"]
            vs = f"; vs baseline {human_bytes(diff['mean_difference'])} (95% CI {human_bytes(lo)} to {human_bytes(hi)})"
        print(f"  {m.label}: {chosen}; bytes to target {mean} ({len(reached)}/{len(m.runs)} seeds){vs}")
    _print_report([result.out_dir / "final"], result.out_dir / "report", [result.target] if result.target else None,
                  False)  # fmt: skip
    return 0


def _cmd_submit(args: argparse.Namespace) -> int:
    from fedcomp.submit import submit

    run_id = submit(args.app, args.connection, args.config, args.run_dir, args.set or [])
    print(f"fedcomp: run {run_id} completed")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedcomp", description="Federated learning with compressed communication.")
    sub = parser.add_subparsers(dest="command", required=True)

    p_run = sub.add_parser("run", help="run one experiment from a TOML config")
    p_run.add_argument(
        "config",
        nargs="?",
        help="experiment TOML file, or a packaged config's name (demo, ...: see fedcomp list); "
        "none runs every key's default",
    )
    p_run.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    p_run.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config key, e.g. federation.rounds=3 (repeatable)",
    )
    p_run.add_argument("--run-dir", help="write the run here instead of a new folder under output_dir")
    p_run.add_argument(
        "--trust-code",
        action="store_true",
        help="with --resume: let the run directory's config import the code it names (its own model, loader "
        "or functions by import path); without it such a run is refused, as a run directory may come from anyone",
    )
    p_run.add_argument("--no-progress", action="store_true", help="no progress bar")
    p_run.add_argument("-v", "--verbose", action="store_true", help="show Flower's and Ray's own logs")
    p_run.add_argument("--report", action="store_true", help="write a report into RUN_DIR/report at the end")
    p_run.set_defaults(func=_cmd_run)

    p_sweep = sub.add_parser("sweep", help="run a grid of configs x seeds, one run directory each")
    p_sweep.add_argument("config", help="base experiment TOML file, or a packaged config's name (demo, ...)")
    p_sweep.add_argument(
        "--grid",
        action="append",
        metavar="KEY=V1,V2",
        help="values to sweep, e.g. uplink.name=surp,rtopk (repeatable: cross product)",
    )
    p_sweep.add_argument("--seeds", type=int, default=1, help="runs per combination, seeds config.seed + 0..N-1")
    p_sweep.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key of the base config")
    p_sweep.add_argument("--sweep-dir", help="sweep directory (give an existing one to resume: complete runs are kept)")
    p_sweep.add_argument("--report", action="store_true", help="write a report into SWEEP_DIR/report at the end")
    p_sweep.add_argument("--target", type=float, action="append", help=TARGET_HELP)
    p_sweep.add_argument("--budget", type=_byte_budget, action="append", metavar="BYTES", help=BUDGET_HELP)
    p_sweep.add_argument("--no-progress", action="store_true", help="no progress bars")
    p_sweep.add_argument("-v", "--verbose", action="store_true", help="show Flower's and Ray's own logs")
    p_sweep.set_defaults(func=_cmd_sweep)

    p_report = sub.add_parser(
        "report",
        help="compare runs: HTML, Markdown, CSV and JSON with figures",
        epilog=REPORT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p_report.add_argument("paths", nargs="+", metavar="RUN_OR_SWEEP_DIR", help="run or sweep directories")
    p_report.add_argument("-o", "--output", required=True, metavar="OUT", help="folder to write the report into")
    p_report.add_argument("--target", type=float, action="append", help=TARGET_HELP)
    p_report.add_argument("--budget", type=_byte_budget, action="append", metavar="BYTES", help=BUDGET_HELP)
    p_report.add_argument("--allow-mixed", action="store_true", help="accept runs of different experiments")
    p_report.set_defaults(func=_cmd_report)

    p_cmp = sub.add_parser(
        "compare",
        help="tune each method on validation data, run paired seeds, compare bytes and rounds to a target",
    )
    p_cmp.add_argument("config", help="base experiment TOML file, or a packaged config's name (demo, ...)")
    p_cmp.add_argument(
        "--method",
        action="append",
        required=True,
        metavar="KEY=VALUE[;KEY=VALUE]",
        help="a method as config overrides, e.g. 'uplink={name=\"surp\",density=0.01}' (repeatable; the first is "
        "the baseline)",
    )
    p_cmp.add_argument("--tune", action="append", metavar="KEY=V1,V2", help="values tried per method (repeatable)")
    p_cmp.add_argument("--seeds", type=int, default=3, help="paired seeds for the final runs (default 3)")
    p_cmp.add_argument("--tune-seeds", type=int, default=1, help="seeds per tuned value (default 1)")
    p_cmp.add_argument("--target", type=float, help="target accuracy (default: the baseline's, less one point)")
    p_cmp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key of the base config")
    p_cmp.add_argument("--out", default="runs/compare", help="the comparison's folder (default runs/compare)")
    p_cmp.add_argument("--no-progress", action="store_true", help="no progress bars")
    p_cmp.set_defaults(func=_cmd_compare)

    p_submit = sub.add_parser(
        "submit",
        help="start fedcomp's app on a SuperLink (flwr run --stream); exit 0 only if the run completed",
    )
    p_submit.add_argument("app", nargs="?", default=".", help="the Flower app folder (default: .)")
    p_submit.add_argument("connection", nargs="?", help="the SuperLink connection in $FLWR_HOME/config.toml")
    p_submit.add_argument("--config", default="deploy", help="experiment TOML on the SuperLink, or a packaged name")
    p_submit.add_argument("--run-dir", help="run directory on the SuperLink (default: a new one under output_dir)")
    p_submit.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    p_submit.set_defaults(func=_cmd_submit)

    p_list = sub.add_parser("list", help="list datasets, models, compressors, strategies and example configs")
    p_list.set_defaults(func=_cmd_list)

    p_init = sub.add_parser("init", help="copy a packaged example config to edit (fedcomp init demo)")
    p_init.add_argument("name", nargs="?", help="a packaged config (see fedcomp list)")
    p_init.add_argument(
        "--flower-app", metavar="DIR", help="write a Flower app (quickstart layout) with fedcomp's mod and wrapper"
    )
    p_init.add_argument("dest", nargs="?", help="file or folder to write (default: ./NAME.toml)")
    p_init.set_defaults(func=_cmd_init)
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
    except ReportError as exc:
        print(f"fedcomp: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"fedcomp: {exc}", file=sys.stderr)
        return 2
    except RunFailedError as exc:
        print(f"fedcomp: run failed: {exc}", file=sys.stderr)
        return 1
    except RunInterruptedError as exc:
        print(f"fedcomp: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("fedcomp: interrupted; finished rounds are kept in the run directory", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `fedcomp list | head`: the reader left; nothing to report
        sys.stdout = None  # type: ignore[assignment]  # no flush of the closed pipe at exit
        return 0


if __name__ == "__main__":
    sys.exit(main())
