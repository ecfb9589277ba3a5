"""fedcomp's compression as Flower building blocks: a client mod and a wrapper around any strategy.

Client::

    from fedcomp.flower import CompressionMod
    app = ClientApp(mods=[CompressionMod(model_fn=Net)])

Server::

    from fedcomp.flower import CompressedStrategy
    strategy = CompressedStrategy(FedAdam(), model_fn=Net, uplink="surp", downlink="identity")
    strategy.start(grid=grid, initial_arrays=ArrayRecord(Net().state_dict()), num_rounds=3)

The wrapper sends the codec settings in every message's ConfigRecord, so
the mod needs nothing but the model. ``strategy.take_round_stats()`` after
each round (an ``evaluate_fn`` is a good place) gives the bytes each way.
"""

from fedcomp.flower.mod import CompressionMod, received_loss_term, received_model
from fedcomp.flower.recalibration import statistics_reply
from fedcomp.flower.strategy import CompressedStrategy, RoundStats
from fedcomp.flower.transport import Transport, TransportError

__all__ = [
    "CompressedStrategy",
    "CompressionMod",
    "RoundStats",
    "Transport",
    "TransportError",
    "received_model",
    "received_loss_term",
    "statistics_reply",
]
