"""Typed experiment configuration: dataclasses, TOML loading and validation.

A configuration is a tree of dataclasses. It is built from a TOML file (or a
plain dict) by :func:`config_from_dict`, which refuses unknown keys, wrong
types and impossible values with a :class:`ConfigError` naming the dotted
key and what was expected. ``--set section.key=value`` overrides are parsed
with TOML's own value syntax (``rounds=3``, ``lr=0.1``, ``name="x"``; a bare
word is taken as a string).

Method sections (``[uplink]``, ``[server_compression]``, ``[strategy]``) hold ``name`` plus the
method's own parameters; those are checked by the compressor's own parameter dataclass
(see :mod:`fedcomp.compressors.update`) or against the Flower strategy's signature
(:mod:`fedcomp.strategies`).
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import tomli_w

from fedcomp.suggest import did_you_mean


class ConfigError(ValueError):
    """A configuration key is unknown, has the wrong type or an impossible value."""


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

    name: str = "identity"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class ServerCompressionConfig:
    """The model compressor the server applies to the global model before broadcast, with its parameters."""

    name: str = "identity"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class DownlinkConfig:
    """The update compressor the server sends the global model's *change* with (``identity``: the model, dense).

    Any uplink compressor, with its parameters; see :mod:`fedcomp.flower.downlink`.
    """

    name: str = "identity"
    initial: Literal["seed", "dense"] = "seed"
    """How a client gets its first model: ``seed``, it builds the round-0 model from the experiment seed as the
    server does (checked by CRC) and receives the change since; ``dense``, the model is sent to it dense once."""
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class StrategyConfig:
    """Flower's aggregation strategy (``fedcomp list``), with its own parameters under Flower's names."""

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

    def validate(self, path: str) -> None:
        require(self.num_cpus > 0, f"{path}.num_cpus", "a number > 0")
        require(self.num_gpus >= 0, f"{path}.num_gpus", "a number >= 0")


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
        from fedcomp.clients.faults import ATTACKS

        for key in ("client_raise_rate", "corrupt_payload_rate", "client_delay_rate"):
            require(0 <= getattr(self, key) <= 1, f"{path}.{key}", "a probability in [0, 1]")
        require(self.client_delay_s >= 0, f"{path}.client_delay_s", "a number of seconds >= 0")
        require(self.hostile_client >= -1, f"{path}.hostile_client", "a partition id, or -1 for none")
        for i, name in enumerate(self.attacks):
            require(name in ATTACKS, f"{path}.attacks[{i}]", f"one of {ATTACKS}, got {name!r}")


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

    def validate(self, path: str = "") -> None:
        require(bool(self.name.strip()), "name", "a non-empty string")
        require(
            self.name not in (".", "..") and not any(c in self.name for c in "/\\\0"),
            "name",
            f"a name without path separators (it names a folder under output_dir), got {_shown(self.name)}",
        )
        require(
            len(self.name.encode("utf-8", "surrogatepass")) <= MAX_NAME_BYTES,
            "name",
            f"a name of at most {MAX_NAME_BYTES} bytes (the run directory's name adds a timestamp, and a file "
            f"system allows 255), got {_shown(self.name)}",
        )
        require(self.seed >= 0, "seed", "an integer >= 0")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value) and hasattr(value, "validate"):
                value.validate(f.name)
        _check_registered(self)

    def to_dict(self) -> dict[str, Any]:
        """The configuration in its TOML shape (uplink parameters inline)."""
        data = dataclasses.asdict(self)
        for section in _OPEN_SECTION_NAMES:
            own = data.pop(section)
            data[section] = {**{k: v for k, v in own.items() if k != "params"}, **own["params"]}
        return data


MAX_NAME_BYTES = 200
"""The longest experiment ``name`` (UTF-8 bytes): ``<name>-<YYYYmmdd-HHMMSS>-<n>`` must fit a file name (255)."""


def _shown(text: str, limit: int = 80) -> str:
    """``text`` quoted for a message, cut to ``limit`` characters (a name may be megabytes long)."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"


def require(ok: bool, key: str, expected: str) -> None:
    """Raise a ConfigError naming ``key`` and what it should have been, unless ``ok``."""
    if not ok:
        raise ConfigError(f"config key '{key}': expected {expected}")


def _check_registered(cfg: ExperimentConfig) -> None:
    """Names must exist in their registries; compressor params must fit."""
    # Imported here: the registries import torch, the config module does not.
    from fedcomp.compressors.model import MODEL_COMPRESSORS
    from fedcomp.compressors.update import UPDATE_COMPRESSORS
    from fedcomp.data import DATASETS
    from fedcomp.imports import add_to_sys_path, is_import_spec, resolve
    from fedcomp.models import MODELS
    from fedcomp.strategies import STRATEGIES, parse_strategy_params

    add_to_sys_path(cfg.python_path)
    c = cfg.client
    for key, spec in (("data.dataset", cfg.data.dataset), ("model.name", cfg.model.name), ("client.train_fn", c.train_fn),
                      ("client.loss", c.loss), ("client.eval_metric", c.eval_metric)):  # fmt: skip
        if is_import_spec(spec) and not callable(resolve(spec, key)):
            raise ConfigError(f"config key '{key}': {spec!r} is not a function or class")
    if c.eval_metric and not is_import_spec(c.eval_metric):
        raise ConfigError(f"config key 'client.eval_metric': expected an import path 'module:fn', got {c.eval_metric!r}")  # fmt: skip
    if cfg.client.train_fn and not is_import_spec(cfg.client.train_fn):
        raise ConfigError(f"config key 'client.train_fn': expected an import path 'module:function', got {cfg.client.train_fn!r}")  # fmt: skip
    for key, name, registry in (
        ("data.dataset", cfg.data.dataset, DATASETS),
        ("model.name", cfg.model.name, MODELS),
        ("uplink.name", cfg.uplink.name, UPDATE_COMPRESSORS),
        ("server_compression.name", cfg.server_compression.name, MODEL_COMPRESSORS),
        ("downlink.name", cfg.downlink.name, UPDATE_COMPRESSORS),
        ("strategy.name", cfg.strategy.name, STRATEGIES),
    ):
        if is_import_spec(name):
            continue
        if name not in registry:
            raise ConfigError(
                f"config key '{key}': unknown name {name!r}{did_you_mean(name, registry)}; choose one of "
                f"{sorted(registry)} or give your own as an import path 'module:name' / 'file.py:name'"
            )
    UPDATE_COMPRESSORS.get(cfg.uplink.name).parse_params(cfg.uplink.params, "uplink")
    model_compressor = MODEL_COMPRESSORS.get(cfg.server_compression.name)
    model_params = model_compressor.parse_params(cfg.server_compression.params, "server_compression")
    late = model_compressor.schedule_problem(model_params, cfg.federation.rounds)
    if late:
        raise ConfigError(f"config key 'server_compression': {late}")
    UPDATE_COMPRESSORS.get(cfg.downlink.name).parse_params(cfg.downlink.params, "downlink")
    from fedcomp.flower.transport import downlink_problem

    problem = downlink_problem(cfg.server_compression.name, model_params, cfg.downlink.name, cfg.downlink.params)
    if problem:
        raise ConfigError(f"config key 'downlink.name': {problem}")
    strategy = parse_strategy_params(cfg.strategy.name, cfg.strategy.params)
    if strategy.get("proximal_mu", 0) and cfg.server_compression.name == "lc":
        raise ConfigError(
            "config key 'strategy.proximal_mu': FedProx's proximal term cannot be combined with LC's penalty "
            "(both pull local training towards a different centre); use one of them"
        )


# --------------------------------------------------------------------------- loading


def config_from_dict(data: dict[str, Any], base_dir: str | Path | None = None) -> ExperimentConfig:
    """Build and validate an :class:`ExperimentConfig` from nested dicts.

    Your own model, dataset loader or train function may be given as the
    object itself (turned into its import path) or as an import path; see
    :mod:`fedcomp.imports`. ``base_dir``: where the config file lives (its
    relative file paths and modules are looked for there first).
    """
    cfg = _build(ExperimentConfig, user_code_as_paths(data, base_dir), "")
    cfg.validate()
    return cfg


USER_CODE_KEYS = (
    ("model", "name"),
    ("data", "dataset"),
    ("client", "train_fn"),
    ("client", "loss"),
    ("client", "eval_metric"),
)
"""Keys that may name the user's own code (an import path, or the object in the Python API)."""


def user_code_as_paths(data: dict[str, Any], base_dir: str | Path | None) -> dict[str, Any]:
    """Objects → import paths, relative script paths → absolute, and ``python_path`` filled once (then kept)."""
    from fedcomp.imports import is_import_spec, spec_of

    if not isinstance(data, dict):
        return data
    data = dict(data)
    dirs = list(data.get("python_path") or [])
    bases = [Path(base_dir).resolve()] if base_dir is not None else []
    bases.append(Path.cwd())
    used = False
    for section, key in USER_CODE_KEYS:
        table = data.get(section)
        if not isinstance(table, dict) or key not in table:
            continue
        value = table[key]
        if callable(value):
            spec, where = spec_of(value, f"{section}.{key}")
            data[section] = {**table, key: spec}
            if where and where not in dirs:
                dirs.append(where)
            used = True
        elif is_import_spec(value):
            target, _, attr = value.rpartition(":")
            if target.endswith(".py") and not Path(target).is_absolute():
                found = next((b / target for b in bases if (b / target).is_file()), None)
                if found is not None:
                    data[section] = {**table, key: f"{found.resolve()}:{attr}"}
            used = True
    if used and not data.get("python_path"):  # filled once, in the driver; recorded with the run
        dirs += [str(b) for b in bases if str(b) not in dirs]
    if dirs:
        data["python_path"] = dirs
    return data


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Load a TOML file (or a packaged config by name, ``"demo"``), apply ``key=value`` overrides, validate.

    Validation resolves the config's import paths (see :mod:`fedcomp.imports` for who allows that).
    """
    p, data = read_toml(path)
    apply_overrides(data, overrides)
    try:
        return config_from_dict(data, base_dir=p.parent)
    except RecursionError:  # a value nested deeper than tomllib's own limit, met while building
        raise ConfigError(f"{p}: a value is nested too deeply to be a config") from None


def load_config_unchecked(path: str | Path) -> ExperimentConfig:
    """The typed config of a TOML file, not validated: it imports nothing, so a run directory's
    ``config.toml`` can be compared with its recorded digest before any of its code is trusted."""
    p, data = read_toml(path)
    try:
        return _build(ExperimentConfig, user_code_as_paths(data, p.parent), "")
    except RecursionError:
        raise ConfigError(f"{p}: a value is nested too deeply to be a config") from None


def read_toml(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """A config file's path (a packaged config by name, too) and its TOML table; ConfigError if unreadable."""
    from fedcomp.configs import config_path  # the package imports this module

    p = config_path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p} is not a text file (byte {exc.start} is not UTF-8): expected a TOML config") from None
    try:
        return p, tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p} is not valid TOML: {exc}") from exc
    except RecursionError:  # tomllib recurses once per nesting level: [[[[...]]]] 100k deep
        raise ConfigError(f"{p} is not a usable TOML config: its values are nested too deeply") from None


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings to a nested dict, in place."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected the form section.key=value")
        set_dotted(data, key, parse_value(raw.strip()), what=f"override {item!r}")
    return data


def set_dotted(data: dict[str, Any], key: str, value: Any, what: str = "key") -> None:
    """``data["a"]["b"] = value`` for ``key = "a.b"``, creating sections as needed."""
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{what}: '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def parse_value(raw: str) -> Any:
    """Parse one override value with TOML syntax; a bare word is a string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw
    except RecursionError:
        raise ConfigError(f"override value {_shown(raw)}: nested too deeply") from None


def dump_config(cfg: ExperimentConfig) -> str:
    """The resolved configuration as TOML (loadable by :func:`load_config`)."""
    return tomli_w.dumps(cfg.to_dict())


# Sections whose extra keys are a method's own parameters, kept in ``params``.
_OPEN_SECTIONS = {UplinkConfig, ServerCompressionConfig, DownlinkConfig, StrategyConfig}
_OPEN_SECTION_NAMES = ("uplink", "server_compression", "downlink", "strategy")
# Keys that existed once: what to write instead.
_REMOVED = {
    "federation.server_lr": 'the server step is FedAvgM\'s now: [strategy] name = "fedavgm", '
    "server_learning_rate = <your server_lr>",
}


def _build(cls: type, data: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"config key '{path}': expected a table (section), got {_type_name(data)}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{path}.{key}" if path else key
        if cls in _OPEN_SECTIONS and (key not in names or key == "params"):
            extra[key] = value
            continue
        if dotted in _REMOVED:
            raise ConfigError(f"config key '{dotted}' was removed: {_REMOVED[dotted]}")
        if key not in names:
            raise ConfigError(
                f"unknown config key '{dotted}'{did_you_mean(key, names)}; known keys here: {sorted(names)}"
            )
        kwargs[key] = _coerce(hints[key], value, dotted)
    if cls in _OPEN_SECTIONS:
        kwargs["params"] = extra
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"config key '{path}': expected one of {list(allowed)}, got {value!r}")
        return value
    if origin in (types.UnionType, typing.Union):
        for arm in typing.get_args(tp):
            try:
                return _coerce(arm, value, path)
            except ConfigError:
                continue
        raise ConfigError(f"config key '{path}': expected {tp}, got {value!r}")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{path}': expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{path}': expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{path}': expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"config key '{path}': expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{path}': expected a string, got {value!r}")
        return value
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{path}': expected a table, got {value!r}")
        return dict(value)
    if origin is tuple or origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key '{path}': expected a list, got {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        return type(value)(_coerce(item_tp, v, f"{path}[{i}]") for i, v in enumerate(value))
    if tp is Any:
        return value
    raise ConfigError(f"config key '{path}': unsupported type {tp}")  # pragma: no cover


def _type_name(value: Any) -> str:
    return type(value).__name__


def params_from_dict(cls: type, data: dict[str, Any], path: str) -> Any:
    """Build a method's parameter dataclass (with its ``validate``) from a dict."""
    obj = _build(cls, data, path)
    if hasattr(obj, "validate"):
        obj.validate(path)
    return obj
