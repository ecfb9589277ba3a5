"""A network model: how long each round would take on given links, from the bytes each message measured.

Each client has a :class:`Link`: uplink and downlink bandwidth (Mbit/s, 10⁶ bit/s) and a one-way latency.
A message of ``n`` bytes takes ``latency + 8·n / bandwidth`` on it. A client's time in a round
(:meth:`NetworkModel.client_time`) is its train message down, its compute, its reply up::

    t_i = (L_i + 8·D_i / B↓_i) + C_i + R + (L_i + 8·U_i / B↑_i)

with ``D_i`` and ``U_i`` the wire bytes of its train message and its reply (:mod:`fedcomp.flower.wire`:
the whole message as Flower serializes it), and ``C_i`` its compute: measured (the seconds the client
reported decoding, training and encoding: ``decode_s + train_s + encode_s``) or modelled (``compute_s``,
for every client, or per client from a trace). ``R`` is the runtime's own cost per client and round
(``overhead_s``, 0 by default): in a simulation the clients start at once, but a deployment of Flower
1.42 polls for messages and starts a process for each one, seconds a round that are neither transfer
nor the compute a client measures (``benchmarks/emulated_link.py`` measures it on an unshaped link and
shows what the model predicts with and without it). ``framing`` scales the bytes a link carries: 1 where
the bandwidths are goodput (what speed tests report: TCP payload per second), 1514/1448 = 1.0456 where they
are link rates counted in Ethernet frames (a 1,514-byte frame carries 1,448 bytes of TCP payload), as a
kernel's traffic shaper counts them. The server waits for its slowest sampled client
(:meth:`NetworkModel.round_duration`), so a round lasts ``max_i t_i``; a client that gave no reply at all
makes the server wait for its timeout. With a deadline ``T``, a client with ``t_i > T`` is dropped from
the aggregate (the wrapper refuses its update as a failure: ``missed the deadline``) and a round that
dropped anyone lasts ``T``. Rounds add up to the simulated clock.

Links come from a config's ``[network]`` section (:meth:`NetworkModel.from_config`): one fixed link for
every client, named profiles (:data:`PROFILES`) given to the clients in turn, or a CSV trace with one
row per client (:func:`read_trace`). The profiles' figures are illustrative round numbers
(docs/runs.md, "Simulated time"); for a study, use a trace of the devices in question.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fedcomp.params import ConfigError
from fedcomp.schema import NETWORK_PROFILES, NetworkConfig

BITS_PER_BYTE = 8
MBIT = 1e6


@dataclass(frozen=True)
class Link:
    """One client's link: bandwidth each way in Mbit/s, one-way latency in ms, and optionally its compute
    time per round in seconds (None: the client's measured time, or the model's ``compute_s``)."""

    uplink_mbps: float
    downlink_mbps: float
    latency_ms: float = 0.0
    compute_s: float | None = None

    def __post_init__(self) -> None:
        for key in ("uplink_mbps", "downlink_mbps"):
            value = getattr(self, key)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(f"network link {key}: expected a finite number > 0, got {value!r}")
        if not (isinstance(self.latency_ms, (int, float)) and math.isfinite(self.latency_ms) and self.latency_ms >= 0):
            raise ConfigError(f"network link latency_ms: expected a finite number >= 0, got {self.latency_ms!r}")
        if self.compute_s is not None and not (math.isfinite(self.compute_s) and self.compute_s >= 0):
            raise ConfigError(f"network link compute_s: expected a finite number >= 0, got {self.compute_s!r}")

    def down_s(self, nbytes: float) -> float:
        """Seconds for ``nbytes`` to arrive from the server."""
        return self.latency_ms / 1000 + BITS_PER_BYTE * nbytes / (self.downlink_mbps * MBIT)

    def up_s(self, nbytes: float) -> float:
        """Seconds for ``nbytes`` to reach the server."""
        return self.latency_ms / 1000 + BITS_PER_BYTE * nbytes / (self.uplink_mbps * MBIT)


PROFILES: dict[str, Link] = {
    # Illustrative round numbers for a typical link of each kind (docs/runs.md cites where measured figures are
    # published); not measurements of fedcomp's.
    "3g": Link(uplink_mbps=1.0, downlink_mbps=3.0, latency_ms=100.0),
    "lte": Link(uplink_mbps=8.0, downlink_mbps=30.0, latency_ms=50.0),
    "broadband": Link(uplink_mbps=20.0, downlink_mbps=100.0, latency_ms=15.0),
}
assert tuple(sorted(PROFILES)) == tuple(sorted(NETWORK_PROFILES)), "schema.NETWORK_PROFILES names PROFILES' keys"

TRACE_COLUMNS = ("client", "uplink_mbps", "downlink_mbps", "latency_ms")
"""A trace's required columns (a header row); ``compute_s`` may follow (empty: not modelled for that client)."""


@dataclass(frozen=True)
class ClientTime:
    """One client's simulated time in a round, in seconds."""

    client: int
    down_s: float
    compute_s: float
    up_s: float
    overhead_s: float = 0.0

    @property
    def total_s(self) -> float:
        return self.down_s + self.compute_s + self.overhead_s + self.up_s


@dataclass
class NetworkModel:
    """Each client's link and compute, and the round's duration (see the module docstring).

    ``links``: client (partition id) → its link; a client not there gets ``cycle[client % len(cycle)]``.
    ``compute_s``: every client's modelled compute per round (0: measured, as the client reports it; a link's
    own ``compute_s`` wins). ``deadline_s``: clients slower than this are dropped from the aggregate (0: none).
    ``overhead_s``: the runtime's fixed seconds per client and round beyond transfers and compute (``R``).
    ``framing``: link bytes per message byte (1: the bandwidths are goodput; see the module docstring).
    """

    links: Mapping[int, Link] = field(default_factory=dict)
    cycle: tuple[Link, ...] = ()
    compute_s: float = 0.0
    deadline_s: float = 0.0
    overhead_s: float = 0.0
    framing: float = 1.0

    def __post_init__(self) -> None:
        if not self.links and not self.cycle:
            raise ConfigError("NetworkModel: give links (client → Link) or a cycle of links")
        if not (math.isfinite(self.compute_s) and self.compute_s >= 0):
            raise ConfigError(f"NetworkModel compute_s: expected a finite number >= 0, got {self.compute_s!r}")
        if not (math.isfinite(self.deadline_s) and self.deadline_s >= 0):
            raise ConfigError(f"NetworkModel deadline_s: expected a finite number >= 0, got {self.deadline_s!r}")
        if not (math.isfinite(self.overhead_s) and self.overhead_s >= 0):
            raise ConfigError(f"NetworkModel overhead_s: expected a finite number >= 0, got {self.overhead_s!r}")
        if not (math.isfinite(self.framing) and 1 <= self.framing <= 2):
            raise ConfigError(f"NetworkModel framing: expected a number from 1 to 2, got {self.framing!r}")

    @classmethod
    def fixed(cls, uplink_mbps: float, downlink_mbps: float, latency_ms: float = 0.0, **kw: float) -> NetworkModel:
        """Every client on the same link."""
        return cls(cycle=(Link(uplink_mbps, downlink_mbps, latency_ms),), **kw)

    @classmethod
    def profiles(cls, *names: str, **kw: float) -> NetworkModel:
        """Client ``i`` on profile ``names[i % len(names)]`` (:data:`PROFILES`)."""
        unknown = [n for n in names if n not in PROFILES]
        if unknown or not names:
            raise ConfigError(f"network profiles: expected names from {sorted(PROFILES)}, got {list(names)}")
        return cls(cycle=tuple(PROFILES[n] for n in names), **kw)

    @classmethod
    def from_config(cls, cfg: NetworkConfig) -> NetworkModel | None:
        """The model ``[network]`` describes; None when ``link = "off"``. A trace is read here (ConfigError
        naming the file and line if it is not usable)."""
        kw = {"compute_s": cfg.compute_s, "deadline_s": cfg.deadline_s, "overhead_s": cfg.overhead_s,
              "framing": cfg.framing}  # fmt: skip
        if cfg.link == "off":
            return None
        if cfg.link == "fixed":
            return cls.fixed(cfg.uplink_mbps, cfg.downlink_mbps, cfg.latency_ms, **kw)
        if cfg.link == "profile":
            return cls.profiles(*cfg.profile, **kw)
        return cls(links=read_trace(cfg.trace), **kw)

    def link_of(self, client: int) -> Link:
        if client in self.links:
            return self.links[client]
        if not self.cycle:
            raise KeyError(f"the network trace has no row for client {client}")
        return self.cycle[client % len(self.cycle)]

    def client_time(self, client: int, down_bytes: int, up_bytes: int, measured_compute_s: float) -> ClientTime:
        """``client``'s time in a round: its message down, its compute, its reply up."""
        link = self.link_of(client)
        compute = (
            link.compute_s
            if link.compute_s is not None
            else self.compute_s
            if self.compute_s > 0
            else measured_compute_s
        )
        down, up = link.down_s(down_bytes * self.framing), link.up_s(up_bytes * self.framing)
        return ClientTime(client, down, float(compute), up, self.overhead_s)

    def misses_deadline(self, time: ClientTime) -> bool:
        return self.deadline_s > 0 and time.total_s > self.deadline_s

    def round_duration(self, times: Iterable[ClientTime], *, no_reply: bool = False, timeout_s: float = 0.0) -> float:
        """How long the server waits: for its slowest client, or until the deadline when a client misses it
        (or gives no reply at all); without a deadline, a missing reply makes it wait ``timeout_s``."""
        slowest = max((t.total_s for t in times), default=0.0)
        if self.deadline_s > 0:
            return self.deadline_s if no_reply or slowest > self.deadline_s else slowest
        return max(slowest, timeout_s) if no_reply else slowest


def read_trace(path: str | Path) -> dict[int, Link]:
    """Client → link from a CSV file with the columns :data:`TRACE_COLUMNS` (and optionally ``compute_s``).

    ConfigError naming ``network.trace``, the file and the line for a missing file, a missing column, a value
    that is not a number in range, or a client listed twice."""
    p = Path(path)
    where = f"config key 'network.trace': {p}"
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    reader = csv.DictReader(text.splitlines())
    columns = [c.strip() for c in (reader.fieldnames or [])]
    missing = [c for c in TRACE_COLUMNS if c not in columns]
    if missing:
        raise ConfigError(f"{where}: the header lacks the column(s) {missing}; expected {list(TRACE_COLUMNS)}")
    links: dict[int, Link] = {}
    for line, row in enumerate(reader, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
        try:
            client = int(row["client"])
            if client < 0:
                raise ValueError("client must be >= 0")
            compute = row.get("compute_s", "")
            link = Link(
                uplink_mbps=float(row["uplink_mbps"]),
                downlink_mbps=float(row["downlink_mbps"]),
                latency_ms=float(row["latency_ms"]),
                compute_s=float(compute) if compute else None,
            )
        except (ValueError, ConfigError) as exc:
            raise ConfigError(f"{where} line {line}: {exc}") from None
        if client in links:
            raise ConfigError(f"{where} line {line}: client {client} is listed twice")
        links[client] = link
    if not links:
        raise ConfigError(f"{where}: no rows after the header")
    return links


def check_trace_covers(links: Mapping[int, Link], num_clients: int) -> None:
    """ConfigError unless the trace has a row for every client 0 … num_clients − 1."""
    missing = [c for c in range(num_clients) if c not in links]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise ConfigError(f"config key 'network.trace': no row for client(s) {shown} of {num_clients}")
