"""One simulation engine (Ray and its client actors) kept for several runs: ``with fedcomp.shared_engine():``.

Every :func:`fedcomp.run` starts Flower's simulation runtime, which builds a
``RayBackend``: ``ray.init``, then one actor per client slot, each a process
that imports torch, Flower and fedcomp. At the end of the run the backend
terminates its actors and calls ``ray.shutdown()``. On a small run that
start-up is most of the time (about 16 s of an 18 s one-round run on 2
cores; ``benchmarks/sweep_engine.py`` measures it). Flower 1.42 offers no
option to keep the engine: its runtime constructs
``flwr.server.superlink.fleet.vce.backend.raybackend.RayBackend`` itself.
Inside ``shared_engine()`` fedcomp puts :class:`KeptRayBackend` in that
name's place for the length of each run; it wraps a real ``RayBackend``
and, when the run ends, keeps Ray and the idle actors for the next run with
the same backend settings. Actors are stateless between messages (the
ClientApp and the node's Context travel with each one), so a kept actor
serves a new run as a fresh one would; what it keeps is its imports and
fedcomp's per-process caches, which are keyed by the experiment.

The engine is not kept, and the next run starts a fresh one, when a run
ends with an actor still busy or dead (an interrupted or crashed run),
when the backend settings change (client resources, Ray's init arguments),
and for runs that attach to a Ray cluster (``simulation.ray_address``).
Leaving the ``with`` block terminates the actors and shuts Ray down, as a
single run does. Should a Flower release stop looking the backend up by
that name, runs simply start their own engine again (correct, only
slower), and a warning says so once.

Modules a kept worker imported stay imported: after editing a model or
loader module, start a new ``shared_engine()`` (a file given as
``file.py:factory`` is imported afresh when its path differs).

``simulation.backend = "in-process"`` puts :class:`InProcessBackend` there
instead: Flower's whole message path (link state, object store, the
simulation runtime's node contexts and worker threads) runs unchanged, and
only the last step, handing a message to a ClientApp, happens in this
process rather than in a Ray actor. No engine starts, so there is nothing
to share.
"""

from __future__ import annotations

import contextlib
import json
import logging
import pickle
import threading
from collections.abc import Callable, Iterator
from typing import Any

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_depth = 0  # nested shared_engine() blocks: the outermost one shuts the engine down
_kept: _Kept | None = None
_warned_unused = False
_built = 0  # KeptRayBackends Flower built (a run that built none was not shared: see _warn_if_unused)


class _Kept:
    """The Ray backend kept between runs, and the settings it was built with."""

    def __init__(self, settings: str, backend: Any) -> None:
        self.settings = settings
        self.backend = backend


def _settings(backend_config: dict[str, Any]) -> str:
    return json.dumps(backend_config, sort_keys=True, default=str)


def _ray_init_args(settings: str) -> str:
    """The ``ray.init`` part of the backend settings: two runs with the same one can share a Ray."""
    return json.dumps(json.loads(settings).get("init_args", {}), sort_keys=True)


def _attaches_to_cluster(backend_config: dict[str, Any]) -> bool:
    address = backend_config.get("init_args", {}).get("address")
    return bool(address) and address != "local"


def _close_kept(*, shutdown_ray: bool) -> None:
    """Terminate the kept actors (and Ray, unless the next backend reuses it)."""
    global _kept
    kept, _kept = _kept, None
    if kept is None:
        return
    import ray

    if shutdown_ray:
        ray.shutdown()  # its actors go with it
    elif kept.backend.pool is not None:
        for actor in kept.backend.pool.pool:  # idle (a kept pool has none busy)
            ray.kill(actor)


class KeptRayBackend:
    """Flower's ``Backend`` interface over a ``RayBackend`` that outlives the run when it can.

    Composition, not a subclass: each method hands over to the real backend,
    except that ``build`` reuses a kept actor pool and ``terminate`` keeps it
    (and Ray) when every actor came back idle.
    """

    ray_backend_class: type  # Flower's RayBackend, set by backend_for_run

    def __init__(self, backend_config: dict[str, Any]) -> None:
        global _kept, _built
        _built += 1
        self._broken = False
        self._keep = not _attaches_to_cluster(backend_config)
        settings = _settings(backend_config)
        with _lock:
            if _kept is not None and _kept.settings == settings and self._keep:
                self._inner, self._reused = _kept.backend, True
                return
            if _kept is not None:  # other settings: a fresh pool; a fresh Ray only if its arguments differ
                same_ray = self._keep and _ray_init_args(_kept.settings) == _ray_init_args(settings)
                _close_kept(shutdown_ray=not same_ray)
            self._inner, self._reused = self.ray_backend_class(backend_config), False
            if self._keep:
                _kept = _Kept(settings, self._inner)

    @property
    def num_workers(self) -> int:
        return self._inner.num_workers

    def build(self, app_fn: Callable[[], Any]) -> None:
        if self._reused and self._inner.pool is not None:
            self._inner.app_fn = app_fn  # the actors take the ClientApp with every message
            return
        self._inner.build(app_fn)

    def is_worker_idle(self) -> bool:
        return self._inner.is_worker_idle()

    def process_message(self, message: Any, context: Any) -> Any:
        from ray.exceptions import RayActorError

        try:
            return self._inner.process_message(message, context)
        except RayActorError:  # an actor died (killed, out of memory): this pool is not kept
            self._broken = True
            raise

    def terminate(self) -> None:
        global _kept
        pool = self._inner.pool
        all_idle = pool is not None and len(pool.pool) == pool.num_actors
        with _lock:
            if self._keep and not self._broken and all_idle and _kept is not None and _kept.backend is self._inner:
                logger.debug("keeping the engine (%d actors) for the next run", pool.num_actors)
                return
            if _kept is not None and _kept.backend is self._inner:
                _kept = None
        self._inner.terminate()  # what Flower does: terminate the actors, shut Ray down


@contextlib.contextmanager
def shared_engine() -> Iterator[None]:
    """Keep one engine (Ray and its client actors) for every run inside the block.

    ``fedcomp.run``, ``fedcomp.resume`` and ``fedcomp.run_sweep`` inside
    the block start the engine at most once per backend setting; the block's
    end shuts it down. Sweeps use one by themselves.
    """
    global _depth
    with _lock:
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            last = _depth == 0
        if last:
            _close_kept(shutdown_ray=True)


def release() -> None:
    """Shut the kept engine down now (inside a ``shared_engine()`` block the next run starts a fresh one)."""
    with _lock:
        _close_kept(shutdown_ray=True)


def active() -> bool:
    """Whether a ``shared_engine()`` block is open."""
    return _depth > 0


class InProcessBackend:
    """Flower's ``Backend`` interface that runs the ClientApp in this process, one message at a time.

    What a Ray actor does (``flwr.simulation.ray_transport.ray_actor.ClientAppActor.run``), without the
    actor: load the app, hand it the message and the node's context, wrap what it raises in Flower's
    ``ClientAppException``. Message and context cross as copies (pickled both ways, as Ray serializes an
    actor call's arguments and result), so a client can no more change the server's objects here than
    through Ray. One worker, whatever ``simulation.num_cpus`` says: clients in threads of one process
    would share torch's global random state (a seeded round-0 model, dropout) and its thread count,
    and their results would depend on how the threads interleave. One at a time, a run is as
    reproducible as on Ray, and a breakpoint or a profiler sees one client.
    """

    def __init__(self, backend_config: dict[str, Any]) -> None:
        self.app_fn: Callable[[], Any] | None = None

    @property
    def num_workers(self) -> int:
        return 1

    def build(self, app_fn: Callable[[], Any]) -> None:
        self.app_fn = app_fn

    def is_worker_idle(self) -> bool:
        return True

    def process_message(self, message: Any, context: Any) -> Any:
        import torch  # deferred: `import fedcomp` stays light
        from flwr.clientapp.client_app import ClientAppException, LoadClientAppError

        if self.app_fn is None:
            raise ValueError("build() the backend before processing messages")
        message, context = pickle.loads(pickle.dumps((message, context)))
        threads = torch.get_num_threads()  # a client sets torch's (process-wide) thread count for its work
        try:
            app = self.app_fn()
            reply = app(message=message, context=context)
        except LoadClientAppError:
            raise
        except Exception as exc:
            raise ClientAppException(str(exc)) from exc
        finally:
            torch.set_num_threads(threads)  # ... which in an actor ends with the actor, here it must be undone
        return pickle.loads(pickle.dumps((reply, context)))

    def terminate(self) -> None:
        self.app_fn = None


@contextlib.contextmanager
def backend_for_run(kind: str = "ray") -> Iterator[None]:
    """For the length of one run, the backend Flower's runtime builds.

    ``"in-process"``: :class:`InProcessBackend`. ``"ray"``: a :class:`KeptRayBackend` if an engine is
    shared, else Flower's own ``RayBackend``.
    """
    if kind == "ray" and not active():
        yield
        return
    from flwr.server.superlink.fleet.vce.backend import raybackend

    original = raybackend.RayBackend
    KeptRayBackend.ray_backend_class = original
    before = _built
    raybackend.RayBackend = InProcessBackend if kind == "in-process" else KeptRayBackend
    try:
        yield
    finally:
        raybackend.RayBackend = original
    if kind == "ray":
        _warn_if_unused(_built > before)  # reached only when the run returned


def _warn_if_unused(used: bool) -> None:
    global _warned_unused
    if not used and not _warned_unused:
        _warned_unused = True
        logger.warning(
            "shared_engine(): this Flower release did not build its backend through "
            "flwr.server.superlink.fleet.vce.backend.raybackend.RayBackend; every run starts its own engine"
        )
