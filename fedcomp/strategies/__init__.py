"""Flower's aggregation strategies by name, with their own parameters (``[strategy]``).

fedcomp does not reimplement aggregation: ``[strategy] name`` picks a
strategy from ``flwr.serverapp.strategy``, its parameters keep Flower's
names (FedAdam's ``eta``, ``eta_l``, ``beta_1``, ``beta_2``, ``tau``;
FedAvgM's ``server_learning_rate``, ``server_momentum``; FedProx's
``proximal_mu``; Krum's ``num_malicious_nodes``, ...), and
:class:`fedcomp.flower.CompressedStrategy` carries the compressed
transport around it. Sampling, client-side evaluation and the minimum node
counts are fedcomp's (``[federation]``), so those parameters are not
offered here. Adding a strategy is one ``_strategy(...)`` line.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from fedcomp.params import ConfigError
from fedcomp.registry import Registry
from fedcomp.schema import ExperimentConfig
from fedcomp.suggest import did_you_mean

# Set by fedcomp: sampling is seeded (SeededSampler), evaluation is centralized, replies carry these keys.
CONTROLLED = frozenset(
    {
        "self",
        "fraction_train",
        "fraction_evaluate",
        "min_train_nodes",
        "min_evaluate_nodes",
        "min_available_nodes",
        "weighted_by_key",
        "arrayrecord_key",
        "configrecord_key",
        "train_metrics_aggr_fn",
        "evaluate_metrics_aggr_fn",
    }
)
# Required by Flower but known to fedcomp: filled from the experiment unless given.
DERIVED = {"client_learning_rate": lambda cfg: cfg.client.lr}


@dataclass(frozen=True)
class StrategyEntry:
    """One of Flower's strategies: its class name in ``flwr.serverapp.strategy``."""

    class_name: str

    def flower_class(self) -> type:
        import flwr.serverapp.strategy as flower_strategies

        return getattr(flower_strategies, self.class_name)

    def params(self) -> dict[str, Any]:
        """Parameter → default (``inspect.Parameter.empty`` if required) for every parameter users may set."""
        out: dict[str, Any] = {}
        for name, p in inspect.signature(self.flower_class().__init__).parameters.items():
            if name in CONTROLLED or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            if p.default is p.empty or isinstance(p.default, (bool, int, float, str)):
                out[name] = p.default
        return out


STRATEGIES: Registry[StrategyEntry] = Registry("strategy")


def _strategy(name: str, class_name: str, summary: str) -> None:
    STRATEGIES.register(name, summary)(StrategyEntry(class_name))


_strategy("fedavg", "FedAvg", "FedAvg: the example-weighted mean of the clients' models (McMahan et al. 2017)")
_strategy("fedavgm", "FedAvgM", "FedAvg with server learning rate and momentum (Hsu et al. 2019)")
_strategy("fedadam", "FedAdam", "adaptive server optimizer, Adam (Reddi et al. 2021)")
_strategy("fedyogi", "FedYogi", "adaptive server optimizer, Yogi (Reddi et al. 2021)")
_strategy("fedadagrad", "FedAdagrad", "adaptive server optimizer, Adagrad (Reddi et al. 2021)")
_strategy(
    "fedprox", "FedProx", "FedAvg with the proximal term mu/2 |w - w_global|^2 in local training (Li et al. 2020)"
)
_strategy("fedmedian", "FedMedian", "coordinate-wise median of the clients' models (Yin et al. 2018)")
_strategy("fedtrimmedavg", "FedTrimmedAvg", "coordinate-wise trimmed mean, a fraction beta cut at each end (Yin et al. 2018)")  # fmt: skip
_strategy("krum", "Krum", "the one model closest to its neighbours, robust to num_malicious_nodes (Blanchard et al. 2017)")  # fmt: skip
_strategy("multikrum", "MultiKrum", "the mean of the num_nodes_to_select models Krum scores best")
_strategy("bulyan", "Bulyan", "MultiKrum selection, then a trimmed mean (El Mhamdi et al. 2018)")
_strategy("qfedavg", "QFedAvg", "fair aggregation weighting clients by loss^q (Li et al. 2020)")


def parse_strategy_params(name: str, data: dict[str, Any], path: str = "strategy") -> dict[str, Any]:
    """Check ``[strategy]``'s parameters against the Flower class's: names, types, the required ones."""
    entry = STRATEGIES.get(name)
    known = entry.params()
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            raise ConfigError(
                f"unknown config key '{path}.{key}'{did_you_mean(key, known)} for strategy {name!r}; "
                f"its parameters: {sorted(known)}"
            )
        default = known[key]
        kind = type(default) if default is not inspect.Parameter.empty else float
        ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            raise ConfigError(f"config key '{path}.{key}': expected {kind.__name__}, got {value!r}")
        out[key] = value
    for key, default in known.items():
        if default is inspect.Parameter.empty and key not in out and key not in DERIVED:
            raise ConfigError(f"config key '{path}.{key}' is required by strategy {name!r}")
    return out


def build_strategy(cfg: ExperimentConfig) -> Any:
    """The configured Flower strategy, for fedcomp's server (which samples and evaluates itself)."""
    section = cfg.strategy
    entry = STRATEGIES.get(section.name)
    params = parse_strategy_params(section.name, section.params)
    for key, derive in DERIVED.items():
        if key in entry.params() and key not in params:
            params[key] = derive(cfg)
    try:
        return entry.flower_class()(
            fraction_train=1.0,  # of the nodes fedcomp sampled
            # Every client evaluates when they are asked to (federation.evaluate_on); else only the server.
            fraction_evaluate=1.0 if cfg.federation.evaluate_on != "server" else 0.0,
            min_train_nodes=1,
            min_evaluate_nodes=1,
            min_available_nodes=1,
            **params,
        )
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"strategy {section.name!r} refuses its parameters: {exc}") from None
