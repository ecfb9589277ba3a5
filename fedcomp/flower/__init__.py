"""fedcomp's compression as Flower building blocks: a client mod and a wrapper around any strategy.

Client::

    from fedcomp.flower import CompressionMod
    app = ClientApp(mods=[CompressionMod(model_fn=Net)])

Server::

    from fedcomp.flower import CompressedStrategy
    strategy = CompressedStrategy(FedAdam(), model_fn=Net, uplink="surp", server_compression="identity")
    strategy.start(grid=grid, initial_arrays=ArrayRecord(Net().state_dict()), num_rounds=3)

``uplink`` compresses the clients' updates, ``server_compression`` the
model the server broadcasts (a model compressor: LC, ALDS, UDFC, BWCP),
and ``downlink`` the model's change when the server sends that instead of
the model (an update compressor; the config's ``[uplink]``,
``[server_compression]`` and ``[downlink]``).

The wrapper sends the codec settings in every message's ConfigRecord, so
the mod needs nothing but the model. ``recorder=AppRecorder("runs/x")``
writes the run directory fedcomp's own apps write (``fedcomp report`` reads
it); without one, ``strategy.take_round_stats()`` in your ``evaluate_fn``
gives each round's bytes each way (None in Flower's round-0 call, which
evaluates the initial model before any round).
"""

from fedcomp.flower.mod import CompressionMod, received_loss_term, received_model
from fedcomp.flower.recalibration import statistics_reply
from fedcomp.flower.recording import AppRecorder
from fedcomp.flower.rounds import RoundRow, RoundStats
from fedcomp.flower.strategy import CompressedStrategy
from fedcomp.flower.transport import Transport, TransportError
from fedcomp.strategies.influence import NormBound

__all__ = [
    "AppRecorder",
    "NormBound",
    "CompressedStrategy",
    "CompressionMod",
    "RoundRow",
    "RoundStats",
    "Transport",
    "TransportError",
    "received_model",
    "received_loss_term",
    "statistics_reply",
]
