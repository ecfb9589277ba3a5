"""Server-side compression of the global model (issues 5 and 6).

So far: the LC compression forms and their exact C steps
(:mod:`fedcomp.compressors.model.lc_forms`). The model-compressor interface
and its registry, and the federated LC loop, are not built yet.
"""
