"""Update compressors (client → server), looked up by name.

To add one: write a module here with a subclass of
:class:`~fedcomp.compressors.update.base.UpdateCompressor` decorated with
``@UPDATE_COMPRESSORS.register(name)`` (the registry lives in :mod:`.base`), and import it below.
"""

from fedcomp.compressors.update import (  # noqa: F401  (registers)
    blockwise8,
    dgc,
    drive,
    eden,
    identity,
    nf4,
    powersgd,
    qsgd,
    quantized_ec,
    rtopk,
    signsgd,
    surp,
    terngrad,
    topk,
)
from fedcomp.compressors.update.base import UPDATE_COMPRESSORS

__all__ = ["UPDATE_COMPRESSORS"]
