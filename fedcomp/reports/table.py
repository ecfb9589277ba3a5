"""The figures of a report's table, computed from the run files alone.

Per run: final and best test accuracy, total bytes (both directions) and
each direction, mean bytes per client per round each way, the compression
ratio against the identity codec both ways, the final model's shipped bytes
and the uncompressed model's accuracy (server compression), the bytes (total and uplink) and rounds
to first reach a target accuracy, wall time, the rounds that aggregated no
update and the failed client replies; with a ``[network]`` model, the
simulated seconds to the target and of the whole run (``sim_clock_s``). Per group (runs that differ only in
seed): mean and standard deviation (n − 1) of each, and how many of its
runs failed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from fedcomp.reports.curves import curve, first_reach, shipped_curve
from fedcomp.reports.runs import RunGroup, RunRecord

METRICS: dict[str, str] = {
    "final_accuracy": "final test accuracy",
    "best_accuracy": "best test accuracy of the model the run ships (a server compressor's compressed model)",
    "total_bytes": "total bytes, both directions",
    "uplink_bytes": "total uplink bytes",
    "downlink_bytes": "total downlink bytes",
    "uplink_per_client_round": "uplink bytes per client per round",
    "downlink_per_client_round": "downlink bytes per client per round",
    "uplink_bits_per_parameter": "uplink bits per model parameter per client per round",
    "downlink_bits_per_parameter": "downlink bits per model parameter per client per round (train payloads)",
    "compression_ratio": "uplink compression ratio vs identity",
    "downlink_ratio": "downlink compression ratio vs identity (train payloads per client per round)",
    "final_model_bytes": "the final model's bytes as shipped (final_model.bin)",
    "dense_accuracy": "final test accuracy of the uncompressed global model",
    "total_bytes_to_target": "total bytes (both directions) to reach the target",
    "uplink_bytes_to_target": "uplink bytes to reach the target",
    "rounds_to_target": "rounds to reach the target",
    "sim_s_to_target": "simulated seconds to reach the target ([network])",
    "sim_clock_s": "simulated seconds of the whole run ([network])",
    "rounds_without_update": "rounds w/o update",
    "failed_replies": "failed client replies",
    "wall_s": "wall time (s)",
}


@dataclass
class Stat:
    mean: float | None
    std: float | None
    values: list[float | None]

    @classmethod
    def of(cls, values: list[float | None]) -> Stat:
        known = [v for v in values if v is not None and math.isfinite(v)]
        if not known:
            return cls(None, None, values)
        mean = sum(known) / len(known)
        std = math.sqrt(sum((v - mean) ** 2 for v in known) / (len(known) - 1)) if len(known) > 1 else 0.0
        return cls(mean, std, values)


@dataclass
class GroupRow:
    label: str
    uplink: str
    runs: list[str]
    seeds: list[int]
    status: str
    """``complete`` or e.g. ``partial: 1 of 2 runs (3/10 rounds)``."""
    metrics: dict[str, Stat] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    """What is damaged in the group's run files (each names the file and line)."""
    failed_runs: int = 0
    """Runs whose summary says ``failed`` (reported over the rounds they finished)."""
    server_compression: str = "identity"
    """The group's model compressor (the report shows the final model's bytes and the dense accuracy for it)."""
    counted: bool = True
    """Whether the figures are of complete runs, one per seed (else of partial runs: never in the frontier)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "uplink": self.uplink,
            "runs": self.runs,
            "seeds": self.seeds,
            "status": self.status,
            "warnings": self.warnings,
            "failed_runs": self.failed_runs,
            "counted": self.counted,
            "metrics": {k: {"mean": s.mean, "std": s.std, "values": s.values} for k, s in self.metrics.items()},
        }


@dataclass
class Table:
    rows: list[GroupRow]
    target_accuracy: float | None
    target_source: str
    identity_bytes: float | None
    identity_source: str
    warnings: list[str] = field(default_factory=list)
    """Every damaged or left-out run file the report saw (each names the file and line)."""

    @property
    def simulated(self) -> bool:
        """Whether any group's runs carry a simulated clock (``[network]``): the report then shows time too."""
        return any(r.metrics["sim_clock_s"].mean is not None for r in self.rows if "sim_clock_s" in r.metrics)


def run_metrics(
    run: RunRecord, target: float | None, identity_bytes: float | None, n_params: int | None = None
) -> dict[str, float | None]:
    accs = [p.accuracy for p in curve(run)]
    shipped = [p.accuracy for p in shipped_curve(run)]  # best: of the models the run ships, not the dense global
    uploads = sum(len(r["clients"]) for r in run.rows)
    sampled = sum(int(r["sampled_clients"]) for r in run.rows)
    up = sum(int(r["uplink_bytes"]) for r in run.rows)
    down = sum(int(r["downlink_bytes"]) for r in run.rows)
    up_pcr = up / uploads if uploads else None
    # Train payloads only (client-side evaluation gets the model dense): per sampled client, as sent.
    sent = [b for r in run.rows for b in r.get("downlink_bytes_sent_per_client") or []]
    if not sent:  # runs from before per-client downlink bytes: every sampled client got the same payload
        sent = [
            int(r.get("downlink_bytes_per_client") or 0) for r in run.rows for _ in range(int(r["sampled_clients"]))
        ]
    down_pcr = sum(sent) / len(sent) if sent and sum(sent) else None
    reached = first_reach(run, target) if target is not None else None
    return {
        "final_accuracy": accs[-1] if accs else None,
        "best_accuracy": max(shipped) if shipped else None,
        "total_bytes": float(up + down),
        "uplink_bytes": float(up),
        "downlink_bytes": float(down),
        "uplink_per_client_round": up_pcr,
        "downlink_per_client_round": down / sampled if sampled else None,
        "uplink_bits_per_parameter": 8 * up_pcr / n_params if up_pcr and n_params else None,
        "downlink_bits_per_parameter": 8 * down_pcr / n_params if down_pcr and n_params else None,
        "compression_ratio": identity_bytes / up_pcr if identity_bytes and up_pcr else None,
        "downlink_ratio": identity_bytes / down_pcr if identity_bytes and down_pcr else None,
        "final_model_bytes": _number(run.summary.get("final_model_bytes")),
        "dense_accuracy": _dense_accuracy(run),
        "total_bytes_to_target": float(reached.total) if reached else None,
        "uplink_bytes_to_target": float(reached.uplink) if reached else None,
        "rounds_to_target": float(reached.round) if reached else None,
        "sim_s_to_target": reached.sim_s if reached else None,
        "sim_clock_s": _number(run.rows[-1].get("sim_clock_s")) if run.rows else None,
        "rounds_without_update": float(sum(1 for r in run.rows if not r["clients"])),
        "failed_replies": float(sum(int(r["failed_clients"]) for r in run.rows)),
        "wall_s": _wall(run),
    }


def _number(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def _dense_accuracy(run: RunRecord) -> float | None:
    """The last evaluation of the uncompressed global model: the row's own accuracy unless the evaluated
    model was a compressed one (LC's Δ(Θ), a final-only compressor's last round), then ``global_test_accuracy``."""
    for r in reversed(run.rows):
        if r.get("test_accuracy") is None:
            continue
        dense = (r.get("server_metrics") or {}).get("global_test_accuracy", r["test_accuracy"])
        return _number(dense)
    return None


def _wall(run: RunRecord) -> float | None:
    wall = _number(run.summary.get("wall_s"))
    if wall is not None:
        return wall
    return sum(float(r.get("wall_s", 0.0)) for r in run.rows) or None


def identity_payload_bytes(groups: list[RunGroup]) -> tuple[float | None, str]:
    """Bytes per client per round of the uncompressed update: measured if an identity run is there.

    Otherwise the identity codec encodes the final model's tensors (from a
    ``model.pt``) and its payload length is used: exact, since the identity
    payload's length depends only on the tensor list.
    """
    for g in groups:
        if g.uplink == "identity":
            vals = [run_metrics(r, None, None)["uplink_per_client_round"] for r in g.runs]
            stat = Stat.of(vals)
            if stat.mean:
                return stat.mean, f"measured by the identity run(s) ({g.label})"
    for g in groups:
        for r in g.runs:
            if r.summary.get("model_structure"):
                continue  # the configured architecture only
            state = r.model_state()
            if state:
                return float(_identity_length(state)), f"identity codec payload of {r.path.name}/model.pt"
    return None, "no identity run and no readable model.pt: ratio not available"


def _identity_length(state: dict[str, Any]) -> int:
    from fedcomp.compressors.update.identity import IdentityCompressor  # the codecs only when no identity run

    update = {k: v for k, v in state.items() if v.is_floating_point()}
    return len(IdentityCompressor().encode(update).payload)


def _status(group: RunGroup) -> str:
    """``complete``, or what was left out of the counted seeds and why."""
    left = group.left_out
    if not left:
        return "complete"
    why = [
        f"seed {r.seed} again" if r.status == "complete" else f"seed {r.seed} partial ({len(r.rows)}/{r.planned_rounds} rounds)"
        for r in left
    ]  # fmt: skip
    if not group.counted:
        return f"partial only, not counted: {', '.join(why)}"
    return f"complete ({len(group.counted)} seeds); not counted: {', '.join(why)}"


def model_parameters(groups: list[RunGroup]) -> int | None:
    """The configured model's floating-point parameter count, from a ``model.pt`` of the configured
    architecture (the denominator of bits per parameter); None if no such file is readable."""
    for g in groups:
        for r in g.runs:
            if r.summary.get("model_structure"):
                continue
            state = r.model_state()
            if state:
                return sum(v.numel() for v in state.values() if v.is_floating_point())
    return None


def default_target(groups: list[RunGroup]) -> tuple[float | None, str]:
    """The lower median of the groups' mean final accuracies, rounded down to a hundredth.

    At least half of the groups reach it on average, compressed ones included, so "bytes to reach the
    target" compares methods instead of reading "—" for all but the uncompressed run (as 99% of the
    identity run's accuracy did); one broken method cannot drag it down to chance level as the lowest
    final accuracy would. ``--target`` overrides it.
    """
    finals = sorted(
        mean
        for g in groups
        if (mean := Stat.of([run_metrics(r, None, None)["final_accuracy"] for r in g.counted]).mean) is not None
    )
    if not finals:
        return None, "no target given and no evaluated accuracy to derive one from"
    median = finals[(len(finals) - 1) // 2]
    target = math.floor(round(median * 100, 6)) / 100
    return target, f"lower median of the groups' mean final accuracies ({median:.4f}), rounded down to 0.01"


def build_table(groups: list[RunGroup], target: float | None = None) -> Table:
    if target is not None:
        target_source = "given"
    else:
        target, target_source = default_target(groups)
    identity, identity_source = identity_payload_bytes(groups)
    n_params = model_parameters(groups)
    rows = []
    for g in groups:
        # Complete runs, one per seed; a group with none is shown over its partial runs, marked, uncounted.
        shown = g.counted or g.runs
        per_run = [run_metrics(r, target, identity, n_params) for r in shown]
        metrics = {k: Stat.of([m[k] for m in per_run]) for k in METRICS}
        failed = sum(1 for r in g.runs if r.summary.get("status") == "failed")
        rows.append(
            GroupRow(
                g.label,
                g.uplink,
                [str(r.path) for r in shown],
                [r.seed for r in shown],
                _status(g),
                metrics,
                [p for r in g.runs for p in r.problems],
                failed,
                g.server_compression,
                counted=bool(g.counted),
            )
        )
    return Table(rows, target, target_source, identity, identity_source)
