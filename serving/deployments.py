"""Ray Serve deployments: model servers, triage workers and the HTTP API ingress.

- :class:`ModelServer`, one deployment per registered model: multiplexed by registry version
  (``@serve.multiplexed``: a request's ``multiplexed_model_id`` is the version; a replica loads
  it with the configured backend on first use and warms it up), answering ``predict(input)``
  through ``@serve.batch`` (dynamic batching; ``max_ongoing_requests`` is kept ≥ the batch size,
  or batches never fill: Ray issue #43288). A promotion or rollback only changes which version
  the next study asks for: no replica restarts. Declares ``num_gpus`` (a fraction) when the
  cluster has GPUs.
- :class:`TriageWorker`: runs :class:`serving.triage.TriagePipeline` in a thread: claims study
  events, pre-processes on its own CPU, calls the model servers through deployment handles,
  writes results back; also delivers critical-finding notifications.
- :func:`api_ingress_class`: the FastAPI application of ``serving.api`` as the Serve ingress, so one
  address serves the API, DICOMweb and ad hoc inference.

Every replica rebuilds :class:`~core.config.Settings` from ``RADCLOUD_*`` variables passed
in its runtime environment, so replicas on other nodes of a joined cluster see the same
settings as the process that deployed them.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle

from core.config import Settings, load_settings

__all__ = [
    "VERSIONS_PER_REPLICA",
    "ModelServer",
    "TriageWorker",
    "api_ingress_class",
    "batch_size",
    "batch_wait_ms",
    "yield_cpu",
]

logger = logging.getLogger(__name__)

_PRODUCTION_TTL_S = 1.0  # a request that names no version: how stale "production" may be
VERSIONS_PER_REPLICA = 3
"""Versions of one model a replica keeps loaded (least recently used out): production, the one
before it (a rollback, studies in flight) and room for one more (a shadow, item 2 of issue 20)."""


def yield_cpu(settings: Settings) -> None:
    """Give this replica's process the niceness ``triage_nice`` (a Ray actor has a process of
    its own), so that the triage and model work in it yields the CPU to the API's replicas and
    Serve's proxy answering readers, and to ingest, where cores are scarce. radcloud's Ray
    starts its workers at niceness 0 (:data:`serving.ray_node.WORKER_NICENESS`), where Ray's
    default, 15, put the API's answers behind Orthanc and the gateway.

    On Linux niceness belongs to each thread (``setpriority`` of the process changes the calling
    thread only), so every thread the process has now is set; threads started later inherit
    their starter's. Only ever raised: an unprivileged process cannot lower its niceness.
    """
    target = settings.triage_nice
    tasks = Path("/proc/self/task")
    threads = [int(task.name) for task in tasks.iterdir()] if tasks.is_dir() else [0]
    for thread in threads:
        try:
            if os.getpriority(os.PRIO_PROCESS, thread) < target:
                os.setpriority(os.PRIO_PROCESS, thread, target)
        except (ProcessLookupError, PermissionError):  # a thread gone meanwhile
            continue


def batch_size(settings: Settings, name: str) -> int:
    """Model ``name``'s largest batch (``serving_model_batching`` or the default)."""
    override = settings.serving_model_batching.get(name, {})
    return int(override.get("max_batch_size", settings.serving_max_batch_size))


def batch_wait_ms(settings: Settings, name: str) -> float:
    """How long model ``name``'s batcher waits for a batch to fill."""
    override = settings.serving_model_batching.get(name, {})
    return float(override.get("batch_wait_ms", settings.serving_batch_wait_ms))


@serve.deployment
class ModelServer:
    """One model name behind dynamic batching, multiplexed by registry version.

    A request names the version it wants as its ``multiplexed_model_id`` (the triage pipeline
    picks the production version when it starts a study); one without gets the production
    version (read from the registry at most once a second: benchmarks, old callers). A replica
    loads a version on its first request and keeps the :data:`VERSIONS_PER_REPLICA` most
    recently used (Ray Serve's ``@serve.multiplexed``, LRU), so a promotion or a rollback needs
    no new replica: the next study asks for the new version, studies in flight finish on theirs.
    ``@serve.batch`` splits a batch by version (Ray 2.60).
    """

    def __init__(self, name: str) -> None:
        from models.registry import ModelRegistry

        settings = load_settings()
        yield_cpu(settings)
        self.name = name
        self.settings = settings
        self.registry = ModelRegistry(settings.paths.models_dir)
        self.max_batch_size = batch_size(settings, name)
        batched: Any = self._batched  # @serve.batch adds these setters
        batched.set_max_batch_size(self.max_batch_size)
        batched.set_batch_wait_timeout_s(batch_wait_ms(settings, name) / 1000.0)
        self.version = ""  # the version of the last batch
        self._production_version, self._production_until = "", 0.0
        self.described: dict[str, Any] = {"name": name, "version": ""}
        self.requests = 0
        self.batches = 0
        self.batch_size_counts: dict[int, int] = {}
        self.inference_seconds = 0.0
        # the production version is loaded and warmed now, as before multiplexing: the first
        # study does not pay for it, and a model that cannot load fails the replica's start
        self._preloaded: dict[str, Any] = {}
        production = self.registry.production(name)
        if production is not None:
            version = str(production.version)
            self._preloaded[version] = self._load(version)
        logger.info("model server %s ready (preloaded: %s)", name, list(self._preloaded) or "none")

    def _load(self, version: str) -> Any:
        from serving.inference import ModelRunner

        runner = ModelRunner.from_registry(
            self.registry,
            self.name,
            version,
            backend=self.settings.serving_backend,
            device=self.settings.serving_device,
        )
        warm = runner.warm_up((1, self.max_batch_size))
        logger.info("model server loaded %s (warm-up %.2f s)", runner.describe(), warm)
        return runner

    @serve.multiplexed(max_num_models_per_replica=VERSIONS_PER_REPLICA)  # type: ignore[untyped-decorator]
    async def runner(self, version: str) -> Any:
        """Version ``version`` of this model, loaded and warmed up (Ray Serve caches it; the
        production version at the replica's start was loaded then)."""
        preloaded = self._preloaded.pop(version, None)
        if preloaded is not None:
            return preloaded
        return await asyncio.get_running_loop().run_in_executor(None, self._load, version)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def _batched(self, inputs: list[tuple[str, np.ndarray]]) -> list[tuple[np.ndarray, str]]:
        version = inputs[0][0]  # Serve splits batches by multiplexed model id: one version
        runner = await self.runner(version)
        batch = np.stack([array for _, array in inputs])
        started = time.perf_counter()
        logits = await asyncio.get_running_loop().run_in_executor(None, runner.predict, batch)
        self.inference_seconds += time.perf_counter() - started
        self.batches += 1
        self.batch_size_counts[len(inputs)] = self.batch_size_counts.get(len(inputs), 0) + 1
        self.version, self.described = version, runner.describe()
        return [(row, version) for row in logits]

    async def predict(self, array: np.ndarray) -> tuple[np.ndarray, str]:
        """Logits for one input shaped as the card's input, and the version that gave them:
        the request's ``multiplexed_model_id``, else the production version now."""
        self.requests += 1
        version = serve.get_multiplexed_model_id() or self._production()
        result: tuple[np.ndarray, str] = await self._batched(
            (version, np.asarray(array, dtype=np.float32))
        )
        return result

    def _production(self) -> str:
        """The production version, read from the registry at most once a second."""
        now = time.monotonic()
        if now >= self._production_until:
            production = self.registry.production(self.name)
            if production is None:
                from models.exceptions import ModelNotFoundError

                raise ModelNotFoundError(self.name, "production")
            self._production_version = str(production.version)
            self._production_until = now + _PRODUCTION_TTL_S
        return self._production_version

    def stats(self) -> dict[str, Any]:
        """Counters for ``/metrics`` (this replica; ``version``: that of its last batch)."""
        return {
            **self.described,
            "requests": self.requests,
            "batches": self.batches,
            "batch_size_counts": dict(self.batch_size_counts),
            "inference_seconds_sum": self.inference_seconds,
            "max_batch_size": self.max_batch_size,
        }

    def check_health(self) -> None:
        """Serve restarts the replica when this raises."""


def _predict_through(handles: dict[str, DeploymentHandle[Any]]) -> Any:
    from serving.exceptions import PlatformUnavailableError

    def predict(name: str, version: str, array: np.ndarray) -> tuple[np.ndarray, str]:
        handle = handles.get(name)
        if handle is None:
            raise PlatformUnavailableError(
                f"model {name} has no deployment (it was registered after serving started: "
                "restart serving)"
            )
        try:
            chosen = handle.options(multiplexed_model_id=version)
            logits, served = chosen.predict.remote(array).result(timeout_s=300)
        except Exception as exc:
            raise PlatformUnavailableError(
                f"model {name} v{version} did not answer: {type(exc).__name__}: {exc}"
            ) from exc
        return np.asarray(logits), str(served)

    return predict


@serve.deployment
class TriageWorker:
    """Consumes study events in a background thread (see :mod:`serving.triage`)."""

    def __init__(self, model_handles: dict[str, DeploymentHandle[Any]]) -> None:
        from serving.wiring import build_notifier, build_pipeline

        settings = load_settings()
        yield_cpu(settings)
        self.settings = settings
        self.pipeline = build_pipeline(
            settings, _predict_through(model_handles), set(model_handles)
        )
        self.notifier = build_notifier(settings)
        self.processed = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="triage", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        interval = self.settings.triage_poll_interval_s
        while not self._stop.is_set():
            worked = False
            try:
                if self.pipeline.run_once() is not None:
                    self.processed += 1
                    worked = True
                if self.notifier is not None:
                    worked = self.notifier.deliver_due() > 0 or worked
            except Exception as exc:  # the loop must survive a bad moment (database locked...)
                self.last_error = f"{type(exc).__name__}: {exc}"
                logger.exception("triage loop")
            if not worked:
                self._stop.wait(interval)

    def status(self) -> dict[str, Any]:
        """Events processed by this replica and its last loop error."""
        return {
            "processed": self.processed,
            "last_error": self.last_error,
            "alive": self._thread.is_alive(),
            "nice": os.getpriority(os.PRIO_PROCESS, 0),
        }

    def check_health(self) -> None:
        """Unhealthy when the loop thread died: Serve replaces the replica."""
        if not self._thread.is_alive():
            raise RuntimeError("triage loop thread is not running")

    def __del__(self) -> None:
        self._stop.set()


def api_ingress_class() -> Any:
    """The ingress deployment class around ``serving.api.create_app`` (built per process)."""
    from serving.api.app import create_app

    app = create_app()

    @serve.deployment
    @serve.ingress(app)
    class ApiIngress:
        def __init__(
            self, model_handles: dict[str, DeploymentHandle[Any]], triage: DeploymentHandle[Any]
        ) -> None:
            # Imported here, in the replica: a reference captured at class definition would be
            # pickled by value, a copy the app's routes never see.
            links = importlib.import_module("serving.api.context").SERVING_LINKS
            links.model_handles = model_handles
            links.triage = triage

            async def model_stats() -> dict[str, Any]:
                stats = {}
                for name, handle in model_handles.items():
                    try:
                        stats[name] = await handle.stats.remote()
                    except Exception as exc:  # noqa: BLE001 - a down model shows as missing
                        logger.warning("stats of %s: %s", name, exc)
                return stats

            links.model_stats = model_stats

    return ApiIngress
