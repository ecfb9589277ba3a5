"""How fedcomp payloads ride inside Flower messages.

A payload is one ``Array`` of dtype uint8 in an ``ArrayRecord`` under
``PAYLOAD_KEY``; its bytes are exactly the compressor's output, so the byte
count of a transfer is ``len(payload)``. The experiment configuration rides
as a JSON string in the ``ConfigRecord`` (control data, not counted as
payload), so a client needs nothing but the message and its node config.
"""

from __future__ import annotations

import json
from typing import Any

from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedcomp.coding import DecodeError

PAYLOAD_KEY = "payload"
ARRAYS_KEY = "arrays"
"""Where a plain Flower message carries a model (Flower's strategies' default ``arrayrecord_key``)."""
CONFIG_KEY = "config"
METRICS_KEY = "metrics"
EXPERIMENT_KEY = "experiment"
# Train-config entries besides the experiment: where clients keep state files, and the last checkpoint round.
STATE_DIR_KEY = "state-dir"
CHECKPOINT_ROUND_KEY = "checkpoint-round"
STYPE = "fedcomp.payload"


def payload_record(payload: bytes) -> ArrayRecord:
    """Wrap payload bytes as the message's single uint8 array."""
    return ArrayRecord({PAYLOAD_KEY: Array(dtype="uint8", shape=(len(payload),), stype=STYPE, data=payload)})


def payload_from(content: RecordDict) -> bytes:
    """The payload bytes of a message; DecodeError if the message has none."""
    try:
        record = content.array_records[PAYLOAD_KEY]
        array = record[PAYLOAD_KEY]
    except KeyError:
        raise DecodeError(f"message carries no '{PAYLOAD_KEY}' array") from None
    if array.stype != STYPE or array.dtype != "uint8":
        raise DecodeError(
            f"payload array has stype {array.stype!r} / dtype {array.dtype!r}, expected {STYPE!r} / 'uint8'"
        )
    return bytes(array.data)


def config_record(experiment: dict[str, Any], **extra: Any) -> ConfigRecord:
    return ConfigRecord({EXPERIMENT_KEY: json.dumps(experiment), **extra})


def experiment_from(content: RecordDict) -> dict[str, Any]:
    try:
        return json.loads(str(content.config_records[CONFIG_KEY][EXPERIMENT_KEY]))
    except (KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"message carries no experiment configuration: {exc}") from None
