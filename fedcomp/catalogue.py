"""What ``fedcomp list`` shows: every registered method with its description and parameters.

The registries live in modules that import torch and Flower (1.5–3 s before
anything prints), so the listing is kept in ``catalogue.json`` next to this
file, written from the registries by ``python -m fedcomp.catalogue``.
``tests/test_catalogue.py`` rebuilds it from the registries and fails when
the file differs, so it cannot go stale unnoticed; ``fedcomp list`` falls
back to the registries if the file is missing.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path
from typing import Any

FILE = Path(__file__).with_name("catalogue.json")
SHOWN_DEFAULT_CHARS = 40
DERIVED_SHOWN = {"client_learning_rate": "client.lr unless set"}
FEEDBACK_SHOWN = 'the method\'s own | "aggregate"'
"""``error_feedback``'s default, and the third value beside true and false (docs/uplink.md)."""


def _compressor_params(params_cls: type | None) -> list[list[str]]:
    """A compressor's parameters and their defaults as shown (``[["density", "0.01"], ...]``)."""
    if params_cls is None or not dataclasses.is_dataclass(params_cls):
        return []
    shown = []
    for f in dataclasses.fields(params_cls):
        if f.default is not dataclasses.MISSING:
            if f.default is None and f.name == "error_feedback":
                value = FEEDBACK_SHOWN if getattr(params_cls, "takes_aggregate_feedback", True) else "the method's own"
            else:
                value = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            value = repr(f.default_factory())
        else:
            value = "(required)"
        shown.append([f.name, value if len(value) <= SHOWN_DEFAULT_CHARS else "(see docs/)"])
    return shown


def _strategy_params(params: dict[str, Any]) -> list[list[str]]:
    return [
        [k, DERIVED_SHOWN.get(k, "(required)") if v is inspect.Parameter.empty else repr(v)] for k, v in params.items()
    ]


def _model_params(factory: Any) -> list[list[str]]:
    """A model factory's ``[model.params]`` and their defaults: its keyword parameters past the two every
    factory takes (``width = 1.0`` for LeNet-5 and the CIFAR ResNets, the LSTM's sizes)."""
    return [
        [name, "(required)" if p.default is inspect.Parameter.empty else repr(p.default)]
        for name, p in inspect.signature(factory).parameters.items()
        if name not in ("input_shape", "num_classes")
    ]


def build() -> dict[str, Any]:
    """The listing, from the registries themselves (imports torch and Flower)."""
    # Imported here: ``fedcomp list`` reads catalogue.json and must not import torch; only a rebuild needs them.
    from fedcomp.compressors.model import MODEL_COMPRESSORS
    from fedcomp.compressors.update import UPDATE_COMPRESSORS
    from fedcomp.configs import packaged_configs
    from fedcomp.data import DATASETS
    from fedcomp.models import MODELS
    from fedcomp.strategies import STRATEGIES

    def family(title: str, registry: Any, params: Any) -> dict[str, Any]:
        entries = [
            {"name": name, "description": registry.summary(name), "params": params(registry.get(name))}
            for name in registry
        ]
        return {"title": title, "entries": entries}

    none = lambda entry: []  # noqa: E731 - datasets have no parameters of their own
    return {
        "families": [
            family("datasets ([data] dataset)", DATASETS, none),
            family("models ([model] name, then [model.params])", MODELS, _model_params),
            family(
                "update compressors ([uplink] name, and [downlink] name for the model's change)",
                UPDATE_COMPRESSORS,
                lambda e: _compressor_params(getattr(e, "Params", None)),
            ),
            family(
                "model compressors ([server_compression] name)",
                MODEL_COMPRESSORS,
                lambda e: _compressor_params(getattr(e, "Params", None)),
            ),
            family(
                "strategies ([strategy] name, then its parameters; Flower's own)",
                STRATEGIES,
                lambda e: _strategy_params(e.params()),
            ),
            {
                "title": "example configs (fedcomp run NAME, fedcomp init NAME)",
                "entries": [{"name": c.name, "description": c.description, "params": []} for c in packaged_configs()],
            },
        ]
    }


def load() -> dict[str, Any]:
    """The listing as written in ``catalogue.json``; built from the registries if the file is missing."""
    try:
        return json.loads(FILE.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return build()


def write() -> Path:
    FILE.write_text(json.dumps(build(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return FILE


if __name__ == "__main__":
    print(f"wrote {write()}")
