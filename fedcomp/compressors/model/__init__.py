"""Model compressors (server → client, the global model before broadcast), looked up by name.

To add one: write a module here with a subclass of
:class:`~fedcomp.compressors.model.base.ModelCompressor` decorated with
``@MODEL_COMPRESSORS.register(name)`` (the registry lives in :mod:`.base`), and import it below. The building
blocks live beside them: LC's compression forms (:mod:`.lc_forms`),
ALDS's decomposition and Algorithm 1 (:mod:`.alds`), architectures that
change under compression (:mod:`.structure`).
"""

from fedcomp.compressors.model import alds, bwcp, identity, lc, udfc  # noqa: F401  (registers)
from fedcomp.compressors.model.base import MODEL_COMPRESSORS

__all__ = ["MODEL_COMPRESSORS"]
