"""The experiment schema: one dataclass per config section, each checking its own keys.

A configuration is a tree of these dataclasses, built from a TOML table by
:func:`fedcomp.params.build` (unknown keys, wrong types and non-finite numbers
are a :class:`~fedcomp.params.ConfigError` naming the dotted key). Each
section's ``validate`` checks what the section alone can know (ranges,
combinations of its own keys). Method sections (``[uplink]``,
``[server_compression]``, ``[downlink]``, ``[strategy]``) hold ``name`` plus the
method's own parameters, kept in ``params``: the method checks those.

This module knows no component: the checks that need one (registered names,
a compressor's parameters, schedules, which compressors go together) are
:func:`fedcomp.preflight.check_config`'s, and :mod:`fedcomp.config` runs both
when it loads a config.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from fedcomp.params import ConfigError, require, shown

ATTACKS = (
    "bounded_shift", "damaged_state", "diverged", "evaluation_inflated", "evaluation_out_of_range", "huge_examples",
    "inf_coordinate", "inf_partition", "malformed_metrics", "nan_examples", "nan_loss", "nan_residual", "nan_update",
    "negative_examples", "raise", "replacement", "stale_version", "statistics_shift", "steal_partition",
    "surp_refresh_2_63",
)  # fmt: skip
"""The attacks ``[faults] attacks`` may name, sorted; :mod:`fedcomp.clients.faults` makes each (``raise``: the
client fails outright, the reference a rejected attack must equal)."""

NETWORK_PROFILES = ("3g", "broadband", "lte")
"""The link profiles ``[network] profile`` may name; :data:`fedcomp.network.PROFILES` holds their figures."""

OPEN_SECTIONS = ("uplink", "server_compression", "downlink", "strategy")
"""Sections whose extra keys are their method's own parameters (kept in ``params``)."""

USER_CODE_KEYS = (
    ("model", "name"),
    ("data", "dataset"),
    ("client", "train_fn"),
    ("client", "loss"),
    ("client", "eval_metric"),
)
"""Keys that may name the user's own code (an import path, or the object in the Python API)."""

MAX_NAME_BYTES = 200
"""The longest experiment ``name`` (UTF-8 bytes): ``<name>-<YYYYmmdd-HHMMSS>-<n>`` must fit a file name (255)."""


@dataclass
class DataConfig:
    """Which dataset, where it lives, and how it is split across clients."""

    dataset: str = "mnist5k"
    """A name from ``fedcomp list``: ``mnist5k`` (embedded) or a torchvision set; or your own loader by
    import path (``"package.module:load"``, see :mod:`fedcomp.data.custom`)."""
    params: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for your own loader (``[data.params]``), or a registered set's parameters
    (``shakespeare``: ``roles``, ``min_samples``, ...; see ``docs/configuration.md``)."""
    data_dir: str = ""
    """Folder holding torchvision datasets (unused by the embedded set)."""
    download: bool = False
    """Let torchvision download a missing dataset (needs the internet)."""
    test_size: int = 1000
    """Embedded set: images held out for the server's test set; shakespeare: windows drawn for it from the
    roles' own test parts."""
    partition: Literal["iid", "dirichlet", "pathological", "natural"] = "iid"
    """``natural``: the clients the data comes with (Shakespeare's speaking roles, a client-key column)."""
    alpha: float = 0.5
    """Dirichlet concentration: smaller means more label skew."""
    classes_per_client: int = 2
    """Pathological partition: number of classes each client holds."""
    per_node: bool = False
    """Deployment: every SuperNode trains on all of the data under its node config's ``data-dir``, not on a
    partition of a shared set; the server's ``data_dir`` then holds only the test set it evaluates on."""
    client_test_fraction: float = 0.2
    """With ``federation.evaluate_on`` = clients or both: the share of each client's data held out for its
    own evaluation (the rest is trained on)."""

    def validate(self, path: str) -> None:
        require(self.test_size > 0, f"{path}.test_size", "a positive integer")
        require(self.alpha > 0 and math.isfinite(self.alpha), f"{path}.alpha", "a finite number > 0")
        require(self.classes_per_client >= 1, f"{path}.classes_per_client", "an integer >= 1")
        require(0 < self.client_test_fraction < 1, f"{path}.client_test_fraction", "a number in (0, 1)")


@dataclass
class ModelConfig:
    name: str = "lenet5_caffe"
    """A name from ``fedcomp list``, or your own: an import path ``"package.module:Net"`` / ``"file.py:Net"``."""
    params: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for the model's factory (``[model.params]``)."""


@dataclass
class FederationConfig:
    """The federation: how many clients, rounds, and who trains each round."""

    removed_keys: ClassVar[dict[str, str]] = {
        "server_lr": 'the server step is FedAvgM\'s now: [strategy] name = "fedavgm", '
        "server_learning_rate = <your server_lr>",
    }
    """Keys that existed once: what to write instead."""

    num_clients: int = 10
    rounds: int = 5
    fraction_train: float = 1.0
    """Fraction of clients sampled for training each round."""
    min_train_clients: int = 2
    """Never sample fewer than this many clients."""
    evaluate_every: int = 1
    """Evaluation every this many rounds (0 = only after the last)."""
    evaluate_on: Literal["server", "clients", "both"] = "server"
    """Where the global model is evaluated: the server's test set, every client's held-out share of its own
    data (``data.client_test_fraction``; aggregated, example-weighted, into the row's ``federated_eval``), or both."""
    round_timeout_s: float = 600.0
    """A client reply not back within this many seconds counts as failed."""
    checkpoint_every: int = 1
    """Save the server state every this many rounds (and after the last); 0 = never."""
    min_replies: int = 0
    """A round aggregates only if at least this many replies are usable; otherwise the model is kept
    and the row says why. 0 = ``min_train_clients``."""
    max_examples: int = 10_000_000
    """The largest ``num-examples`` a reply may claim (a device's weight in the average). In simulation
    a reply must also claim exactly the size its partition reported at warm-up."""
    max_abs_value: float = 1e6
    """A decoded update or broadcast with a value beyond ±this (or not finite) is refused."""
    update_norm_bound: Literal["off", "clip", "reject"] = "off"
    """Bound each update's norm ‖Δ‖₂ before any strategy aggregates it: ``clip`` scales a larger one down to the
    bound, ``reject`` refuses it (the client's failure); ``off``: no bound (FedAvg then gives one client unbounded
    influence within ``max_abs_value``: docs/threat_model.md)."""
    update_norm_factor: float = 3.0
    """The bound relative to the round's median update norm (× median; 0 = none, >= 1 otherwise)."""
    update_norm_max: float = 0.0
    """An absolute bound on ‖Δ‖₂ (0 = none); with both, the smaller applies."""

    @property
    def quorum(self) -> int:
        """Usable replies a round needs to aggregate."""
        return self.min_replies or self.min_train_clients

    def validate(self, path: str) -> None:
        require(self.num_clients >= 1, f"{path}.num_clients", "an integer >= 1")
        require(self.rounds >= 1, f"{path}.rounds", "an integer >= 1")
        require(0 < self.fraction_train <= 1, f"{path}.fraction_train", "a number in (0, 1]")
        require(
            1 <= self.min_train_clients <= self.num_clients,
            f"{path}.min_train_clients",
            f"an integer between 1 and num_clients ({self.num_clients})",
        )
        require(self.evaluate_every >= 0, f"{path}.evaluate_every", "an integer >= 0")
        require(self.round_timeout_s > 0, f"{path}.round_timeout_s", "a number of seconds > 0")
        require(self.checkpoint_every >= 0, f"{path}.checkpoint_every", "an integer >= 0 (0 = never)")
        require(
            0 <= self.min_replies <= self.num_clients,
            f"{path}.min_replies",
            f"an integer between 0 (= min_train_clients) and num_clients ({self.num_clients})",
        )
        require(self.max_examples >= 1, f"{path}.max_examples", "an integer >= 1")
        require(self.max_abs_value > 0, f"{path}.max_abs_value", "a number > 0")
        require(
            self.update_norm_factor == 0 or 1 <= self.update_norm_factor < math.inf,
            f"{path}.update_norm_factor",
            "0 (none) or a finite number >= 1 (× the round's median update norm)",
        )
        require(0 <= self.update_norm_max < math.inf, f"{path}.update_norm_max", "a finite number >= 0 (0 = none)")
        require(
            self.update_norm_bound == "off" or self.update_norm_factor > 0 or self.update_norm_max > 0,
            f"{path}.update_norm_bound",
            "a bound needs update_norm_factor or update_norm_max (or both) > 0",
        )


@dataclass
class ClientConfig:
    """Local training on each client."""

    local_epochs: int = 1
    local_steps: int = 0
    """If > 0, train exactly this many mini-batch steps instead of epochs
    (``local_steps = 1`` is FedSGD, the gradient-compression setting)."""
    batch_size: int = 32
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0
    loss: str = "auto"
    """The training and test loss: ``auto`` (cross-entropy for class labels, MSE for float targets),
    ``cross_entropy``, ``mse``, or your own ``"module:fn"`` with ``fn(outputs, targets) -> scalar tensor``."""
    eval_metric: str = ""
    """Your own test metric, ``"module:fn"`` with ``fn(outputs, targets) -> float`` (a batch mean); recorded
    as ``test_<fn name>`` in the row's ``server_metrics`` (and in ``federated_eval``)."""
    lr_schedule: Literal["constant", "exponential", "cosine"] = "constant"
    """The clients' learning rate across rounds: lr · lr_gamma^(r−1), or cosine from lr to 0 over the rounds."""
    lr_gamma: float = 0.99
    train_fn: str = ""
    """Your own local training by import path (``"module:train"``); "" = fedcomp's loop. See docs/own_code.md."""

    def validate(self, path: str) -> None:
        require(0 < self.lr_gamma <= 1, f"{path}.lr_gamma", "a number in (0, 1]")
        require(
            self.loss in ("auto", "cross_entropy", "mse") or ":" in self.loss,
            f"{path}.loss",
            f"'auto', 'cross_entropy', 'mse' or an import path 'module:fn', got {self.loss!r}",
        )
        require(self.local_epochs >= 1, f"{path}.local_epochs", "an integer >= 1")
        require(self.local_steps >= 0, f"{path}.local_steps", "an integer >= 0")
        require(self.batch_size >= 1, f"{path}.batch_size", "an integer >= 1")
        require(self.lr > 0, f"{path}.lr", "a number > 0")
        require(0 <= self.momentum < 1, f"{path}.momentum", "a number in [0, 1)")
        require(self.weight_decay >= 0, f"{path}.weight_decay", "a number >= 0")


@dataclass
class UplinkConfig:
    """The update compressor clients use, with its own parameters."""

    extra_keys_are_params: ClassVar[bool] = True

    name: str = "identity"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class ServerCompressionConfig:
    """The model compressor the server applies to the global model before broadcast, with its parameters."""

    extra_keys_are_params: ClassVar[bool] = True

    name: str = "identity"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class DownlinkConfig:
    """The update compressor the server sends the global model's *change* with (``identity``: the model, dense).

    Any uplink compressor, with its parameters; see :mod:`fedcomp.flower.downlink`.
    """

    extra_keys_are_params: ClassVar[bool] = True

    name: str = "identity"
    initial: Literal["seed", "dense"] = "seed"
    """How a client gets its first model: ``seed``, it builds the round-0 model from the experiment seed as the
    server does (checked by CRC) and receives the change since; ``dense``, the model is sent to it dense once."""
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class StrategyConfig:
    """Flower's aggregation strategy (``fedcomp list``), with its own parameters under Flower's names."""

    extra_keys_are_params: ClassVar[bool] = True

    name: str = "fedavg"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class SimulationConfig:
    """How Flower's simulation engine places clients on this machine."""

    num_cpus: float = 1.0
    """CPUs reserved per simulated client (Ray resource)."""
    num_gpus: float = 0.0
    """GPUs per client; fractions share a GPU (memory is not capped)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where clients and the server's evaluation run; auto = CUDA if present."""
    ray_address: str = ""
    """Attach to this Ray cluster instead of starting a local one ("" = local)."""
    backend: Literal["ray", "in-process"] = "ray"
    """Where simulated clients run: Ray's actors (default), or this process, one message at a time, through
    the same Flower message path (for debuggers and profilers, and for fast tests; see fedcomp.engine)."""

    def validate(self, path: str) -> None:
        require(self.num_cpus > 0, f"{path}.num_cpus", "a number > 0")
        require(self.num_gpus >= 0, f"{path}.num_gpus", "a number >= 0")
        require(self.backend in ("ray", "in-process"), f"{path}.backend", "'ray' or 'in-process'")
        if self.backend == "in-process" and self.ray_address:
            raise ConfigError(
                f"config key '{path}.ray_address': the in-process backend runs clients in this process, "
                'not on a Ray cluster; remove ray_address or set backend = "ray"'
            )


@dataclass
class FaultConfig:
    """Injected faults, for testing that runs survive failing clients."""

    client_raise_rate: float = 0.0
    """Probability that a sampled client raises instead of training (seeded)."""
    corrupt_payload_rate: float = 0.0
    """Probability that a client's payload has one byte flipped before sending."""
    client_delay_rate: float = 0.0
    """Probability that a client sleeps ``client_delay_s`` before replying (times out if past the round timeout)."""
    client_delay_s: float = 0.0
    hostile_client: int = -1
    """This client (partition id) makes the ``attacks`` (-1 = none); see :mod:`fedcomp.clients.faults`."""
    attacks: list[str] = field(default_factory=list)
    """The hostile client's attack in round r is ``attacks[(r - 1) % len(attacks)]``."""

    def validate(self, path: str) -> None:
        for key in ("client_raise_rate", "corrupt_payload_rate", "client_delay_rate"):
            require(0 <= getattr(self, key) <= 1, f"{path}.{key}", "a probability in [0, 1]")
        require(self.client_delay_s >= 0, f"{path}.client_delay_s", "a number of seconds >= 0")
        require(self.hostile_client >= -1, f"{path}.hostile_client", "a partition id, or -1 for none")
        for i, name in enumerate(self.attacks):
            require(name in ATTACKS, f"{path}.attacks[{i}]", f"one of {list(ATTACKS)}, got {name!r}")


@dataclass
class NetworkConfig:
    """A simulated network (:mod:`fedcomp.network`): each client's link and compute, each round's simulated
    duration from the bytes its messages measured, and optionally a deadline that drops slow clients."""

    link: Literal["off", "fixed", "profile", "trace"] = "off"
    """``fixed``: every client on ``uplink_mbps`` / ``downlink_mbps`` / ``latency_ms``; ``profile``: client i on
    ``profile[i % len(profile)]``; ``trace``: one CSV row per client (``trace``); ``off``: no simulated time."""
    uplink_mbps: float = 0.0
    downlink_mbps: float = 0.0
    latency_ms: float = 0.0
    """One-way, per message."""
    profile: list[str] = field(default_factory=list)
    """Names from ``NETWORK_PROFILES`` ("3g", "lte", "broadband"), given to the clients in turn."""
    trace: str = ""
    """A CSV file: ``client,uplink_mbps,downlink_mbps,latency_ms`` and optionally ``compute_s``, one row per client."""
    compute_s: float = 0.0
    """Every client's compute per round, modelled (0: measured, the client's own decode + train + encode seconds)."""
    deadline_s: float = 0.0
    """Clients whose simulated time in a round exceeds this are dropped from its aggregate (0: none)."""
    overhead_s: float = 0.0
    """The runtime's own seconds per client and round, beyond transfers and compute: 0 for a simulation; a
    deployment's polling and process start-up (``benchmarks/emulated_link.py`` measures it)."""
    framing: float = 1.0
    """Link bytes per message byte: 1 where the bandwidths are goodput (speed tests' TCP payload rate); 1.0456
    (1514/1448) where they are link rates of Ethernet frames, as a traffic shaper counts them."""

    def validate(self, path: str) -> None:
        for key in ("uplink_mbps", "downlink_mbps", "latency_ms", "compute_s", "deadline_s", "overhead_s"):
            require(0 <= getattr(self, key) < math.inf, f"{path}.{key}", "a finite number >= 0")
        require(1 <= self.framing <= 2, f"{path}.framing", "a number from 1 to 2 (link bytes per message byte)")
        if self.link == "fixed":
            for key in ("uplink_mbps", "downlink_mbps"):
                require(getattr(self, key) > 0, f"{path}.{key}", 'a number of Mbit/s > 0 (link = "fixed")')
        else:
            for key in ("uplink_mbps", "downlink_mbps", "latency_ms"):
                require(
                    getattr(self, key) == 0,
                    f"{path}.{key}",
                    f'unset: it applies to link = "fixed" only, link is {self.link!r}',
                )
        require(
            self.link == "profile" or not self.profile,
            f"{path}.profile",
            f'unset: it applies to link = "profile" only, link is {self.link!r}',
        )
        if self.link == "profile":
            require(bool(self.profile), f"{path}.profile", f"a list of profile names from {list(NETWORK_PROFILES)}")
            for i, name in enumerate(self.profile):
                require(
                    name in NETWORK_PROFILES, f"{path}.profile[{i}]", f"one of {list(NETWORK_PROFILES)}, got {name!r}"
                )
        require(
            self.link == "trace" or not self.trace,
            f"{path}.trace",
            f'unset: it applies to link = "trace" only, link is {self.link!r}',
        )
        require(
            self.link != "trace" or bool(self.trace.strip()), f"{path}.trace", 'the path of a CSV file (link = "trace")'
        )
        if self.link == "off":
            for key in ("compute_s", "deadline_s", "overhead_s"):
                require(getattr(self, key) == 0, f"{path}.{key}", 'unset: no network is modelled (link = "off")')
            require(self.framing == 1, f"{path}.framing", 'unset: no network is modelled (link = "off")')


@dataclass
class ExperimentConfig:
    """One federated experiment. Every section has working defaults."""

    name: str = "experiment"
    seed: int = 0
    output_dir: str = "runs"
    python_path: list[str] = field(default_factory=list)
    """Directories your own modules are imported from, in the driver and every worker (filled for you:
    the directory you run in and the config file's, when an import path is used)."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    uplink: UplinkConfig = field(default_factory=UplinkConfig)
    server_compression: ServerCompressionConfig = field(default_factory=ServerCompressionConfig)
    downlink: DownlinkConfig = field(default_factory=DownlinkConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    faults: FaultConfig = field(default_factory=FaultConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)

    def validate(self, path: str = "") -> None:
        """Every section's own checks; :func:`fedcomp.config.validate_config` adds the checks across families."""
        require(bool(self.name.strip()), "name", "a non-empty string")
        require(
            self.name not in (".", "..") and not any(c in self.name for c in "/\\\0"),
            "name",
            f"a name without path separators (it names a folder under output_dir), got {shown(self.name)}",
        )
        require(
            len(self.name.encode("utf-8", "surrogatepass")) <= MAX_NAME_BYTES,
            "name",
            f"a name of at most {MAX_NAME_BYTES} bytes (the run directory's name adds a timestamp, and a file "
            f"system allows 255), got {shown(self.name)}",
        )
        require(self.seed >= 0, "seed", "an integer >= 0")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value) and hasattr(value, "validate"):
                value.validate(f.name)

    def to_dict(self) -> dict[str, Any]:
        """The configuration in its TOML shape (uplink parameters inline)."""
        data = dataclasses.asdict(self)
        for section in OPEN_SECTIONS:
            own = data.pop(section)
            data[section] = {**{k: v for k, v in own.items() if k != "params"}, **own["params"]}
        return data
