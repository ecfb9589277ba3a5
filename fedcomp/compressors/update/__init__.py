"""Update compressors (client → server), looked up by name.

To add one: write a module here with a subclass of
:class:`~fedcomp.compressors.update.base.UpdateCompressor` decorated with
``@UPDATE_COMPRESSORS.register(name)``, and import it below.
"""

from fedcomp.registry import Registry

UPDATE_COMPRESSORS: Registry = Registry("update compressor")

from fedcomp.compressors.update import (  # noqa: E402,F401  (registers)
    dgc,
    identity,
    powersgd,
    qsgd,
    rtopk,
    signsgd,
    surp,
    terngrad,
    topk,
)
