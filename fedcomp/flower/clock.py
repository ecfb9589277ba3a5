"""The simulated clock: each round's simulated duration on the network model, and its deadline.

One job: :class:`SimulatedClock` times a round on :class:`~fedcomp.network.NetworkModel` (``[network]``):
each usable reply's simulated time from the wire bytes its train message and reply measured (the round's
record, :mod:`.wire`) and the client's compute (measured: the seconds it reports, :data:`COMPUTE_METRICS`;
or modelled), the round's duration, and the clock, the sum of the rounds' durations (checkpointed). With a
deadline, the replies that missed it are handed back to be recorded as failures and left out of the
aggregate. Without a network model it keeps no time (the clock stays at 0).
"""

from __future__ import annotations

from typing import Any

from flwr.app import Message

from fedcomp.flower.rounds import RoundStats
from fedcomp.network import NetworkModel
from fedcomp.strategies.replies import Accepted

COMPUTE_METRICS = ("decode_s", "train_s", "encode_s")
"""A client's measured compute in a round: the seconds it reports decoding, training and encoding."""


class SimulatedClock:
    """Each round's simulated duration and the clock (see the module docstring).

    ``network``: each client's link and compute; None, no simulated time. ``round_timeout_s``: how long the
    server waits when a sampled node gives no reply (None: 0)."""

    def __init__(self, network: NetworkModel | None, round_timeout_s: float | None = None) -> None:
        if network is not None and not isinstance(network, NetworkModel):
            raise TypeError(f"network must be a fedcomp.network.NetworkModel, got {type(network).__name__}")
        self.network = network
        self.round_timeout_s = round_timeout_s
        self.clock_s = 0.0
        """The sum of the rounds' simulated durations so far."""

    def time_round(
        self, stats: RoundStats, accepted: list[tuple[Accepted, Message]], *, no_reply: bool
    ) -> tuple[list[tuple[Accepted, Message]], list[tuple[Accepted, str]]]:
        """Each usable reply's simulated time (into ``stats``), the round's duration and the clock; returns the
        replies in time and those that missed the deadline, each with why (the caller records the failure)."""
        assert self.network is not None
        times, kept, missed = [], [], []
        for a, msg in accepted:
            measured = sum(a.metrics.get(k, 0.0) for k in COMPUTE_METRICS)
            t = self.network.client_time(
                a.partition, stats.downlink_wire.get(a.node, 0), stats.uplink_wire.get(a.node, 0), measured
            )
            times.append(t)
            stats.sim_client_s[a.partition] = t.total_s
            if self.network.misses_deadline(t):
                why = f"missed the deadline: {t.total_s:.4g} s simulated > {self.network.deadline_s:g} s (network.deadline_s)"
                missed.append((a, why))
            else:
                kept.append((a, msg))
        timeout = self.round_timeout_s or 0.0
        stats.sim_round_s = self.network.round_duration(times, no_reply=no_reply, timeout_s=timeout)
        self.clock_s += stats.sim_round_s
        stats.sim_clock_s = self.clock_s
        return kept, missed

    def state_dict(self) -> dict[str, Any]:
        return {"sim_clock_s": self.clock_s}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.clock_s = float(state.get("sim_clock_s", 0.0))
