"""The settings a message carries, sent in full once per node and by digest after.

Every train, evaluate and statistics message carries the settings a client obeys: the experiment's
configuration (JSON, about 1.2 kB for the demo) and the transport settings (:mod:`.transport`, about
0.3 kB). They change rarely, so repeating them in every message is waste the wire bytes show
(:mod:`.wire`). Both ends keep them by digest:

- the server (:class:`SettingsLedger`, used by :class:`~fedcomp.flower.wire.WireGrid`) sends an entry in
  full to a node until that node has answered a message that carried it without error; after that, the
  entry is replaced by its digest (``fedcomp.cached``: a small JSON object, key → digest);
- the node (:func:`restore`, run by the client mod before anything reads the message) keeps every full
  entry it receives in ``Context.state`` (which persists per node in simulation and deployment alike),
  at most :data:`KEEP` of them, and puts a digest's entry back before the message goes on.

A node that does not hold a digest it is sent (a SuperNode whose state was lost) fails that message with
:class:`SettingsMissing`; the server then forgets what the node held, and its next message carries the
settings in full again. Entries shorter than :data:`MIN_CHARS` always travel in full.
"""

from __future__ import annotations

import hashlib
import json

from flwr.app import ConfigRecord, Context, Message, RecordDict

from fedcomp.flower.transport import TRANSPORT_KEY
from fedcomp.messages import EXPERIMENT_KEY

CACHED_KEY = "fedcomp.cached"
"""ConfigRecord entry: the entries left out, as JSON ``{key: digest}``."""
STATE_KEY = "fedcomp.settings"
"""The node's store in ``Context.state``: a ConfigRecord digest → the entry's text."""
CACHEABLE = (EXPERIMENT_KEY, TRANSPORT_KEY)
MIN_CHARS = 96
"""Shorter entries cost less in full than their digest and its key."""
KEEP = 8
"""Entries a node keeps (the newest): a sweep in one engine sends several experiments."""
MISS = "settings digest miss"


class SettingsMissing(LookupError):
    """A message names settings by a digest this node does not hold (the server sends them in full next)."""


def digest_of(text: str) -> str:
    """The first 128 bits of the entry's SHA-256, hex."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


# ------------------------------------------------------------------ server
class SettingsLedger:
    """The server's end: which settings each node holds, and the messages shrunk accordingly."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.held: dict[int, set[str]] = {}
        """Node → digests it answered a message carrying in full (so it keeps them)."""
        self.offered: dict[int, set[str]] = {}
        """Node → digests sent to it in full and not yet answered."""

    def shrink(self, msg: Message) -> None:
        """Replace, in ``msg``'s config records, each entry the node holds by its digest (records are copied:
        one record may be shared by every message of a round)."""
        if not self.enabled or not msg.has_content():
            return
        node = int(msg.metadata.dst_node_id)
        held = self.held.get(node, set())
        for name, record in list(msg.content.config_records.items()):
            refs: dict[str, str] = {}
            kept = dict(record)
            for key in CACHEABLE:
                value = kept.get(key)
                if not isinstance(value, str) or len(value) < MIN_CHARS:
                    continue
                d = digest_of(value)
                if d in held:
                    refs[key] = d
                    del kept[key]
                else:
                    self.offered.setdefault(node, set()).add(d)
            if refs:
                kept[CACHED_KEY] = json.dumps(refs, sort_keys=True, separators=(",", ":"))
                msg.content[name] = ConfigRecord(kept)

    def confirm(self, reply: Message) -> None:
        """A reply came: an answer without error means the node keeps what it was offered; a digest miss
        means it holds nothing (its next message carries everything in full)."""
        node = int(reply.metadata.src_node_id)
        if reply.has_error():
            if MISS in str(reply.error.reason):
                self.held.pop(node, None)
            return
        offered = self.offered.pop(node, None)
        if offered:
            self.held.setdefault(node, set()).update(offered)


# ------------------------------------------------------------------ client
def restore(content: RecordDict, context: Context) -> None:
    """In place: every cached entry of ``content``'s config records put back from the node's store, and every
    full entry kept there. :class:`SettingsMissing` if a digest is not held."""
    store = context.state.config_records.get(STATE_KEY)
    changed = False
    for name, record in list(content.config_records.items()):
        if CACHED_KEY in record:
            try:
                refs = json.loads(str(record[CACHED_KEY]))
                if not isinstance(refs, dict):
                    raise TypeError("not an object")
            except (ValueError, TypeError) as exc:
                raise SettingsMissing(f"{MISS}: malformed {CACHED_KEY} ({exc})") from None
            full = {k: v for k, v in record.items() if k != CACHED_KEY}
            for key, d in refs.items():
                text = store.get(str(d)) if store is not None else None
                if not isinstance(text, str) or digest_of(text) != d:
                    raise SettingsMissing(
                        f"{MISS}: this node holds no settings with digest {str(d)[:32]!r} for {key!r} (its stored "
                        "state was lost?); the server sends them in full in its next message"
                    )
                full[str(key)] = text
            content[name] = record = ConfigRecord(full)
        for key in CACHEABLE:
            value = record.get(key)
            if isinstance(value, str) and len(value) >= MIN_CHARS:
                d = digest_of(value)
                if store is None:
                    store = ConfigRecord()
                if d not in store:
                    store[d] = value
                    changed = True
    if changed and store is not None:
        while len(store) > KEEP:  # the oldest first
            del store[next(iter(store))]
        context.state[STATE_KEY] = store


def settings_mod(msg: Message, context: Context, call_next: object) -> Message:
    """A client mod doing :func:`restore` first, for mods that read the settings before the compression mod."""
    restore(msg.content, context)
    return call_next(msg, context)  # type: ignore[operator]
