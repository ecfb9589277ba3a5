"""The client mod's store: a client's compressor state (error-feedback residual, DGC momentum) across rounds.

A client with ``error_feedback = "aggregate"`` keeps no residual (the server's predictor replaces it,
:mod:`fedcomp.flower.predictor`): unless its codec or the downlink gives it state of its own (PowerSGD's
warm start, the model it holds under ``[downlink]``), nothing of it is stored, on disk or in ``Context.state``.

One place at a time:

- when a state directory is known, a file per round,
  ``<state-dir>/<partition>/round-<r>.pt``, written after the round's
  encode and read only when that client is sampled again: the state of
  clients not in the round is on disk, not in memory, so memory does not
  grow with the number of clients (a 45 MB ResNet-18 residual for each of
  1,000 clients would be 45 GB in memory). The directory comes from the
  node config (``state-dir``: on a device, a folder of its own) or, in
  simulation, from the server (the run directory's ``client_state/``);
- without one (a Flower app of the user's that sets no ``state-dir``),
  Flower's per-node ``Context.state``, which the simulation copies to and
  from the worker on every call and keeps in memory for every node.

The client takes the newest file of a round before the current one. The server
deletes files of rounds after the checkpoint it resumes from before round
1 of the new attempt, so a file left by a round that was redone is never
read. Files older than the newest one at or before the last checkpoint are
deleted as rounds go on.

A state file is the client's own, but disks fail and processes die mid-write
elsewhere: a file that cannot be read as a mapping of names to tensors
(truncated, empty, a foreign pickle ``weights_only`` refuses) raises
:class:`StateDamaged`; the client mod then sets it aside (renamed
``round-<r>.pt.corrupt``, kept for whoever wants to look) with
:func:`set_aside` and starts its state fresh, instead of failing every
later round on the same file.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context

from fedcomp.compressors.update.base import State

logger = logging.getLogger(__name__)

UPLINK_STATE_KEY = "fedcomp.uplink_state"
_FILE = re.compile(r"^round-(\d+)\.pt$")
CORRUPT_SUFFIX = ".corrupt"


class StateDamaged(ValueError):
    """A client's stored state that cannot be used; ``reason`` says what is wrong with it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def state_dir_for(context: Context, from_server: str | None) -> Path | None:
    """The node's own ``state-dir`` if it has one, else the one the server named (simulation)."""
    own = context.node_config.get("state-dir")
    if own:
        return Path(str(own))
    return Path(from_server) if from_server else None


def _rounds(folder: Path) -> list[int]:
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for f in folder.iterdir() if (m := _FILE.match(f.name)))


def fit_state(state: State, update: dict[str, torch.Tensor]) -> State:
    """Drop state entries of tensors the model no longer has (its architecture changed under compression).

    State keys are ``<kind>/<tensor name>``; an entry survives only if its
    tensor is still there with the same shape.
    """
    return {
        k: v
        for k, v in state.items()
        if (name := k.split("/", 1)[-1]) in update and tuple(update[name].shape) == tuple(v.shape)
    }


def newest_state_file(folder: Path, server_round: int) -> Path | None:
    """The file a client reads in ``server_round``: its newest of an earlier round, or None."""
    earlier = [r for r in _rounds(folder) if r < server_round]
    return folder / f"round-{earlier[-1]}.pt" if earlier else None


def load_state(context: Context, folder: Path | None, server_round: int) -> State:
    """This client's state from earlier rounds: the newest earlier file, or ``Context.state`` without a folder.

    :class:`StateDamaged` if it is not a mapping of names to tensors."""
    if folder is None:
        record = context.state.array_records.get(UPLINK_STATE_KEY)
        try:
            return dict(record.to_torch_state_dict()) if record is not None else {}
        except Exception as exc:  # noqa: BLE001 - whatever a damaged record raises, it is unusable
            raise StateDamaged(f"the state in Context.state is unreadable ({type(exc).__name__}: {exc})") from None
    path = newest_state_file(folder, server_round)
    if path is None:
        return {}
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated zip, empty file, a pickle weights_only refuses, ...
        raise StateDamaged(f"{path.name} is unreadable ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(loaded, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        raise StateDamaged(f"{path.name} holds a {type(loaded).__name__}, not a mapping of names to tensors")
    return dict(loaded)


def set_aside(context: Context, folder: Path | None, server_round: int, reason: str) -> None:
    """Put the state a client could not use out of the way (renamed ``….corrupt``, or dropped from
    ``Context.state``), so that it starts afresh; logged with ``reason``."""
    if folder is None:
        if UPLINK_STATE_KEY in context.state:
            del context.state[UPLINK_STATE_KEY]
        logger.warning("client state reset (Context.state): %s", reason)
        return
    path = newest_state_file(folder, server_round)
    if path is None:
        return
    target = path.with_name(path.name + CORRUPT_SUFFIX)
    n = 1
    while target.exists():  # keep every damaged file: none overwrites another
        target, n = path.with_name(f"{path.name}{CORRUPT_SUFFIX}.{n}"), n + 1
    os.replace(path, target)
    logger.warning("client state reset: %s; kept as %s", reason, target)


def save_state(
    context: Context,
    folder: Path | None,
    server_round: int,
    state: State,
    checkpoint_round: int,
    *,
    stateless: bool = False,
) -> None:
    """Keep the state in this round's file, or in ``Context.state`` when there is no folder.

    An empty state is written too, so that a later round or a resume never
    falls back to an older, non-empty one; except for a node that keeps no
    state by design (``stateless``: ``error_feedback = "aggregate"``), where
    an empty state writes nothing while the node has no older file to shadow.
    """
    if folder is None:
        if state:
            context.state[UPLINK_STATE_KEY] = ArrayRecord({k: v.contiguous() for k, v in state.items()})
        elif UPLINK_STATE_KEY in context.state:
            del context.state[UPLINK_STATE_KEY]
        return
    if stateless and not state and newest_state_file(folder, server_round + 1) is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".round-{server_round}.pt.tmp"
    torch.save({k: v.contiguous() for k, v in state.items()}, tmp)
    os.replace(tmp, folder / f"round-{server_round}.pt")
    # Keep the newest file at or before the last checkpoint (a resume may need it) and all after.
    rounds = _rounds(folder)
    anchor = max((r for r in rounds if r <= checkpoint_round), default=None)
    for r in rounds:
        if anchor is not None and r < anchor:
            (folder / f"round-{r}.pt").unlink(missing_ok=True)


def drop_rounds_after(root: Path, last_round: int) -> int:
    """Delete every client's files of rounds after ``last_round`` (a resume redoes them); returns how many."""
    dropped = 0
    if not root.is_dir():
        return 0
    for folder in root.iterdir():
        for r in _rounds(folder):
            if r > last_round:
                (folder / f"round-{r}.pt").unlink(missing_ok=True)
                dropped += 1
    return dropped
