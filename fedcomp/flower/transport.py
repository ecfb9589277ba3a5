"""The transport settings the strategy wrapper sends and the client mod obeys.

The server decides how models and updates travel; the clients follow. So
the settings ride in every train and evaluate message, as one JSON string
under :data:`TRANSPORT_KEY` in the ConfigRecord (control data, not counted
as payload), and one mod serves simulation and deployment alike. The
client still checks them: unknown codecs, parameters that do not fit the
codec and malformed JSON are a :class:`TransportError` naming the problem.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ConfigRecord

from fedcomp.compressors.model import MODEL_COMPRESSORS
from fedcomp.compressors.update import UPDATE_COMPRESSORS
from fedcomp.preflight import downlink_problem, unknown_compressor

TRANSPORT_KEY = "fedcomp.transport"
STRUCTURE_KEY = "fedcomp.structure"
"""Train-config entry the mod adds: the received model's architecture edits (JSON), for ``received_model``."""


class TransportError(ValueError):
    """The transport settings in a message are missing, malformed or name something unknown."""


@dataclass(frozen=True)
class Transport:
    """How updates go up and models come down; both sides build the same codecs from it."""

    uplink: str = "identity"
    uplink_params: Mapping[str, Any] = field(default_factory=dict)
    server_compression: str = "identity"
    """The model compressor the server broadcasts the model with (``[server_compression]``)."""
    server_compression_params: Mapping[str, Any] = field(default_factory=dict)
    downlink: str = "identity"
    """The update compressor the server sends the model's change with (``[downlink]``; "identity": the model
    itself, dense)."""
    downlink_params: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    max_abs_value: float = 1e6
    """A decoded value beyond ±this (or not finite) is refused, by the server and by the clients."""
    model: Mapping[str, Any] | None = None
    """fedcomp's model registry entry (``name``, ``input_shape``, ``num_classes``); None: the client's own model_fn."""
    arrays_key: str = "arrays"
    """The ArrayRecord key the user's functions read and write (the inner strategy's ``arrayrecord_key``)."""

    def __post_init__(self) -> None:
        """The settings' own checks; the compressors' names and whether they go together are
        :mod:`fedcomp.preflight`'s, as for a config."""
        unknown = unknown_compressor(self.uplink, self.server_compression, self.downlink)
        if unknown:
            raise TransportError(unknown)
        if not (isinstance(self.max_abs_value, (int, float)) and self.max_abs_value > 0):
            raise TransportError(f"max_abs_value must be a number > 0, got {self.max_abs_value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise TransportError(f"seed must be an integer >= 0, got {self.seed!r}")
        # Parameters are checked where they are parsed (a ConfigError naming the key).
        self.update_params()
        self.downlink_compressor()
        problem = downlink_problem(self.server_compression, self.model_params(), self.downlink, self.downlink_params)
        if problem:
            raise TransportError(problem)

    @property
    def sends_model_change(self) -> bool:
        """Whether the downlink carries the model's change (:mod:`.downlink`) instead of the model."""
        return self.downlink != "identity"

    def update_params(self) -> Any:
        return UPDATE_COMPRESSORS.get(self.uplink).parse_params(dict(self.uplink_params), "uplink")

    def model_params(self) -> Any:
        return MODEL_COMPRESSORS.get(self.server_compression).parse_params(
            dict(self.server_compression_params), "server_compression"
        )

    def update_compressor(self) -> Any:
        """The configured update compressor (the client encodes with it, the server decodes)."""
        return UPDATE_COMPRESSORS.get(self.uplink)(self.update_params(), seed=self.seed)

    def downlink_compressor(self) -> Any:
        """The compressor of the model's change on the downlink (the server encodes with it, clients decode)."""
        cls = UPDATE_COMPRESSORS.get(self.downlink)
        return cls(cls.parse_params(dict(self.downlink_params), "downlink"), seed=self.seed)

    def model_compressor(self, arch: Any) -> Any:
        """The configured model compressor for ``arch`` (the server broadcasts with it, clients decode)."""
        return MODEL_COMPRESSORS.get(self.server_compression)(self.model_params(), arch, seed=self.seed)

    def to_json(self) -> str:
        return json.dumps(
            {
                "uplink": {"name": self.uplink, **self.uplink_params},
                "server_compression": {"name": self.server_compression, **self.server_compression_params},
                "downlink": {"name": self.downlink, **self.downlink_params},
                "seed": self.seed,
                "max_abs_value": self.max_abs_value if math.isfinite(self.max_abs_value) else "inf",
                "model": dict(self.model) if self.model is not None else None,
                "arrays_key": self.arrays_key,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Transport:
        try:
            data = json.loads(text)
            renamed = _renamed_keys(data)
            if renamed:
                raise TransportError(renamed)
            up, model, change = dict(data["uplink"]), dict(data["server_compression"]), dict(data["downlink"])
            bound = data["max_abs_value"]
            return cls(
                uplink=up.pop("name"),
                uplink_params=up,
                server_compression=model.pop("name"),
                server_compression_params=model,
                downlink=change.pop("name"),
                downlink_params=change,
                seed=data["seed"],
                max_abs_value=math.inf if bound == "inf" else bound,
                model=data.get("model"),
                arrays_key=str(data.get("arrays_key", "arrays")),
            )
        except TransportError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise TransportError(f"malformed transport settings ({TRANSPORT_KEY}): {exc}") from None


def _renamed_keys(data: Any) -> str:
    """Settings from a peer that still names the compressors the old way: which key is now which ("" if none).

    Older versions sent the model compressor as ``downlink`` and the compressor of the model's change as
    ``downlink_update``; read as they are now, the first would be taken for the change's compressor."""
    if not isinstance(data, dict):
        return ""
    if "downlink_update" in data:
        return (
            f"transport settings ({TRANSPORT_KEY}) name 'downlink_update': downlink_update is now downlink "
            "(the compressor of the model's change), and the model compressor is server_compression; the "
            "server and its clients must run the same fedcomp version"
        )
    if "server_compression" not in data and "downlink" in data:
        return (
            f"transport settings ({TRANSPORT_KEY}) lack 'server_compression': the model compressor is "
            "server_compression now (older versions sent it as downlink, which now names the compressor of the "
            "model's change); the server and its clients must run the same fedcomp version"
        )
    return ""


def transport_from(config: ConfigRecord) -> Transport | None:
    """The settings in a message's ConfigRecord; None if it has none (a message not meant for the mod)."""
    if TRANSPORT_KEY not in config:
        return None
    return Transport.from_json(str(config[TRANSPORT_KEY]))
