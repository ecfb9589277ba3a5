"""Checks that run before the engine starts: everything that can be known wrong is a ConfigError.

A mistake found after Ray has started costs the engine's start-up, leaves a
failed run directory and shows up as one traceback per client. What can be
checked in the driver is checked here, with the config key named:

- the data exists (``data.data_dir``), can be fetched if ``data.download``
  asks for it, and is large enough (``data.test_size``, every client's
  partition non-empty);
- the model builds on the data's shape and runs a forward pass (your own
  model by import path included; one registered only in the script being
  run is refused, since workers do not import that script);
- float (regression) targets are split IID and not trained with cross-entropy;
- the model compressor applies to the model (LC groups, ALDS exclusions,
  BWCP's conv–BN layers) and every round its schedule names exists;
- at least one client fits the machine (``simulation.num_cpus`` / ``num_gpus``
  against this machine's CPUs and the CUDA devices torch sees, or against each
  node of the Ray cluster ``simulation.ray_address`` names): otherwise Flower's
  engine stops with "ActorPool is empty" and no round runs.

Cheaper, and run by every config load (:func:`fedcomp.config.validate_config`), :func:`check_config`:
everything in a config that spans families, which its schema (:mod:`fedcomp.schema`) cannot know:

- every name is registered (dataset, model, compressors, strategy), or an import path to a function or class;
- each compressor's parameters fit it, and the model compressor's schedule fits the rounds;
- the compressors go together (:func:`downlink_problem`), and FedProx is not combined with LC.

The same checks on transport settings a client receives are :func:`unknown_compressor` and
:func:`downlink_problem`, which :class:`fedcomp.flower.transport.Transport` runs. A model compressor named
where the downlink's compressor goes (``[downlink] name = "lc"``, ``downlink="lc"``) is refused with where it
belongs now (:func:`model_compressor_as_downlink`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from typing import Any

import torch

from fedcomp.compressors.model import MODEL_COMPRESSORS
from fedcomp.compressors.model.base import build_model_compressor
from fedcomp.compressors.model.structure import Architecture
from fedcomp.compressors.update import UPDATE_COMPRESSORS
from fedcomp.data import DATASETS, experiment_partitions, load_experiment_data
from fedcomp.data.base import DatasetNotFoundError
from fedcomp.imports import add_to_sys_path, is_import_spec, resolve
from fedcomp.models import MODELS, initial_model
from fedcomp.network import check_trace_covers, read_trace
from fedcomp.params import ConfigError
from fedcomp.schema import ExperimentConfig
from fedcomp.strategies import STRATEGIES, parse_strategy_params
from fedcomp.suggest import did_you_mean

SCHEDULE_FIELDS = ("start_round", "compress_at", "prune_at")
"""Model-compressor parameters that name federated rounds."""


def check_experiment(cfg: ExperimentConfig) -> None:
    """Raise :class:`ConfigError` naming the key if ``cfg`` cannot run; cheap (one dataset load, one forward)."""
    check_resources(cfg)
    check_network(cfg)
    split = _check_data(cfg)
    _check_model(cfg, split)
    _check_model_compressor(cfg, split)


def check_network(cfg: ExperimentConfig) -> None:
    """ConfigError naming ``network.trace`` (its file and line) unless the trace is readable and has a row for
    every client; the server reads it again when it starts (a client never does)."""
    if cfg.network.link == "trace":
        check_trace_covers(read_trace(cfg.network.trace), cfg.federation.num_clients)


def check_resources(cfg: ExperimentConfig) -> None:
    """ConfigError naming ``simulation.num_gpus`` / ``num_cpus`` unless some node can host one client.

    Flower's rule (``pool_size_from_resources``): a node hosts clients if it has the CPUs one client asks
    for and, when a client asks for GPUs, that many GPUs too.
    """
    sim = cfg.simulation
    if sim.ray_address:
        found = _cluster_nodes(sim.ray_address)
        if found is None:
            return
        nodes, where = found, f"any node of the Ray cluster at {sim.ray_address}"
    else:
        nodes = [{"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}]
        where = "this machine"
    gpus = max((n.get("GPU", 0.0) for n in nodes), default=0.0)
    cpus = max((n.get("CPU", 0.0) for n in nodes), default=0.0)
    if sim.num_gpus > 0 and gpus == 0:
        raise ConfigError(
            f"config key 'simulation.num_gpus': expected 0: {where} has no GPU "
            f"({'torch sees no CUDA device' if not sim.ray_address else 'Ray reports none'}); set num_gpus = 0"
        )
    fits = [n for n in nodes if n.get("CPU", 0.0) >= sim.num_cpus and (sim.num_gpus == 0 or n.get("GPU", 0.0) >= sim.num_gpus)]  # fmt: skip
    if fits:
        return
    if sim.num_gpus > gpus:
        raise ConfigError(
            f"config key 'simulation.num_gpus': a client asks for {sim.num_gpus:g} GPUs, {where} has at most {gpus:g}"
        )
    raise ConfigError(
        f"config key 'simulation.num_cpus': a client asks for {sim.num_cpus:g} CPUs, {where} has at most {cpus:g}"
        + (f" with {sim.num_gpus:g} GPUs" if sim.num_gpus else "")
    )


def _cluster_nodes(address: str) -> list[dict[str, float]] | None:
    """Each live node's resources in the Ray cluster at ``address``, connecting just to ask.

    None when this process is connected to a Ray already (a shared engine's): asking would mean
    leaving it; the engine's own start then finds out, and the run ends as failed.
    """
    import ray

    if ray.is_initialized():
        return None
    try:
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
        return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive") and n.get("Resources")]
    except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, TimeoutError or RuntimeError here
        raise ConfigError(f"config key 'simulation.ray_address': cannot reach a Ray cluster at {address!r}: {_why(exc)}") from None  # fmt: skip
    finally:
        if ray.is_initialized():
            ray.shutdown()  # the engine connects with its own arguments


def _check_data(cfg: ExperimentConfig) -> Any:
    d = cfg.data
    try:
        split = load_experiment_data(cfg)
    except ConfigError:
        raise
    except DatasetNotFoundError as exc:
        raise ConfigError(f"config key 'data.data_dir': {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a download or a damaged file: name it, whatever it is
        key = "data.download" if d.download else "data.data_dir"
        raise ConfigError(f"config key '{key}': dataset {d.dataset!r} could not be loaded: {_why(exc)}") from None
    if split.partitions is not None and d.partition not in ("iid", "natural"):
        raise ConfigError(
            f"config key 'data.partition': {d.dataset!r} comes split per client already; leave partition = 'iid' "
            "(or 'natural': the same, the clients it comes with)"
        )
    if not split.is_classification:
        if d.partition != "iid":
            raise ConfigError(
                f"config key 'data.partition': {d.partition!r} splits by class, but {d.dataset!r} has float "
                "(regression) targets; use partition = 'iid'"
            )
        if cfg.client.loss == "cross_entropy":
            raise ConfigError(f"config key 'client.loss': cross-entropy needs class labels; {d.dataset!r} has float targets")  # fmt: skip
    if d.per_node:  # each SuperNode brings its own training data: nothing here to split
        return split
    try:
        parts = experiment_partitions(cfg, split.train.labels.numpy(), split.partitions)
    except ValueError as exc:
        raise ConfigError(f"config key 'federation.num_clients': {exc}") from None
    empty = [i for i, p in enumerate(parts) if len(p) == 0]
    if empty:
        raise ConfigError(
            f"config key 'data.partition': {len(empty)} of {len(parts)} clients get no training data "
            f"(first: client {empty[0]}); use fewer clients or another partition"
        )
    return split


def _check_model(cfg: ExperimentConfig, split: Any) -> torch.nn.Module:
    name = cfg.model.name
    if not is_import_spec(name) and name in MODELS and getattr(MODELS.get(name), "__module__", "") == "__main__":
        raise ConfigError(
            f"config key 'model.name': {name!r} is registered in the script being run, which Ray's worker "
            f"processes do not import; name it by import path instead: model.name = '<your script>.py:<factory>' "
            "(or pass the function or class itself: {'model': {'name': Net}})"
        )
    try:
        model = initial_model(cfg, split.input_shape, split.num_classes)
        model.eval()
        x = split.test.normalize(split.test.images[:2])
        with torch.no_grad():
            out = model(x)
    except Exception as exc:  # noqa: BLE001 - the user's model may raise anything
        raise ConfigError(
            f"config key 'model.name': model {cfg.model.name!r} does not run on {split.input_shape} inputs "
            f"of {cfg.data.dataset!r}: {_why(exc)}"
        ) from None
    single = out.ndim == 1 and split.num_classes == 1 and not split.is_classification
    if not single and (out.ndim != 2 or out.shape[1] != split.num_classes):
        raise ConfigError(
            f"config key 'model.name': model {cfg.model.name!r} gives outputs of shape {tuple(out.shape)}, "
            f"expected (batch, {split.num_classes}) for {cfg.data.dataset!r}"
        )
    return model


def _check_model_compressor(cfg: ExperimentConfig, split: Any) -> None:
    section = cfg.server_compression
    try:
        compressor = build_model_compressor(cfg, Architecture.of_config(cfg, split.input_shape, split.num_classes))
    except ConfigError:
        raise
    except (ValueError, TypeError, KeyError, RuntimeError) as exc:
        raise ConfigError(
            f"config key 'server_compression': {section.name!r} does not apply to model {cfg.model.name!r}: {_why(exc)}"
        ) from None
    rounds = cfg.federation.rounds
    for f in dataclasses.fields(compressor.params):
        if f.name not in SCHEDULE_FIELDS:
            continue
        value = getattr(compressor.params, f.name)
        named = value if isinstance(value, list) else [value]
        beyond = [r for r in named if not 1 <= r <= rounds]
        if beyond:
            raise ConfigError(
                f"config key 'server_compression.{f.name}': round(s) {beyond} do not exist "
                f"(federation.rounds = {rounds})"
            )


# --------------------------------------------------------------------------- checks across families


def check_config(cfg: ExperimentConfig) -> None:
    """ConfigError naming the key unless every name in ``cfg`` is known and its compressors' parameters fit them,
    their schedules its rounds, and its compressors and strategy each other (cheap: no data, no model)."""
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
    misplaced = model_compressor_as_downlink(cfg.downlink.name)
    if misplaced:
        raise ConfigError(f"config key 'downlink.name': {misplaced}")
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
    problem = downlink_problem(cfg.server_compression.name, model_params, cfg.downlink.name, cfg.downlink.params)
    if problem:
        raise ConfigError(f"config key 'downlink.name': {problem}")
    strategy = parse_strategy_params(cfg.strategy.name, cfg.strategy.params)
    if strategy.get("proximal_mu", 0) and cfg.server_compression.name == "lc":
        raise ConfigError(
            "config key 'strategy.proximal_mu': FedProx's proximal term cannot be combined with LC's penalty "
            "(both pull local training towards a different centre); use one of them"
        )


def unknown_compressor(uplink: Any, server_compression: Any, downlink: Any) -> str:
    """Transport settings (:mod:`fedcomp.flower.transport`): which compressor name is not registered ("" if none)."""
    misplaced = model_compressor_as_downlink(downlink)
    if misplaced:
        return misplaced
    for what, name, registry in (
        ("uplink compressor", uplink, UPDATE_COMPRESSORS),
        ("server_compression (model compressor)", server_compression, MODEL_COMPRESSORS),
        ("downlink compressor (of the model's change)", downlink, UPDATE_COMPRESSORS),
    ):
        if not isinstance(name, str) or name not in registry:
            return f"{what} {name!r} is unknown; choose one of {sorted(registry)}"
    return ""


def model_compressor_as_downlink(name: Any) -> str:
    """Why ``name`` cannot be the downlink's compressor when it is a model compressor's ("" otherwise).

    ``downlink`` names the compressor of the model's change (an update compressor); the model compressor
    is ``server_compression``, which fedcomp's code once called ``downlink``."""
    if not isinstance(name, str) or name in UPDATE_COMPRESSORS or name not in MODEL_COMPRESSORS:
        return ""
    return (
        f"{name!r} is a model compressor: the model compressor is server_compression={name!r} now "
        "([server_compression] in a config); downlink names the compressor of the model's change "
        f"(an update compressor, one of {sorted(UPDATE_COMPRESSORS)})"
    )


def downlink_problem(model_name: str, model_params: Any, change_name: str, change_params: Mapping[str, Any]) -> str:
    """Why a model compressor and a downlink update compressor cannot go together ("" if they can); and a
    downlink ``error_feedback`` other than the one it always has.

    The model's change is sent only while the broadcast is the model itself:
    with no model compressor, or one that acts on the final model only
    (UDFC ``final_only``, ALDS without ``compress_at``). LC's Δ(Θ), BWCP's
    masks and a pruned or factorized model change what the clients hold in
    ways a change of w cannot express.
    """
    if change_name == "identity":
        return ""
    if not MODEL_COMPRESSORS.get(model_name).broadcasts_dense_model(model_params):
        return (
            f"[downlink] name = {change_name!r} sends the model's change, which needs a broadcast of the model "
            f"itself; server_compression {model_name!r} compresses the broadcast during training. Use one of them, "
            "or a model compressor that acts on the final model only (udfc final_only = true, alds compress_at = [])"
        )
    if change_params.get("error_feedback") is False:
        return (
            "downlink.error_feedback = false: the downlink always feeds back what was not sent "
            "(it sends w − R, the global model minus what clients hold); remove the key"
        )
    if change_params.get("error_feedback") == "aggregate":
        return (
            'downlink.error_feedback = "aggregate": aggregate feedback is the uplink\'s (many clients, one shared '
            "predictor); the downlink has one sender, whose memory w − R already feeds back what was not sent; "
            'remove the key ([uplink] error_feedback = "aggregate" goes with any [downlink])'
        )
    return ""


def _why(exc: BaseException) -> str:
    text = str(exc).removeprefix("server_compression: ")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
