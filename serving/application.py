"""The Ray Serve application of one radcloud instance, and the process that runs it.

``python -m serving`` (started by ``radcloud up`` as the ``api`` component) joins the Ray
cluster at ``RADCLOUD_RAY_ADDRESS``, or the nodes radcloud started on this machine
(``RADCLOUD_RAY_NODES`` > 1: ``serving.ray_node``), or starts a local one, starts Serve's HTTP
proxy on ``bind_host:api_port`` (:func:`proxy_location`) and deploys:

    api (FastAPI ingress) ──handles──▶ model-<name> (one per registered model, multiplexed
          │                                   ▲          by version, @serve.batch)
          └──▶ triage (TriageWorker) ─handles─┘

Isolation: a local Ray and radcloud's own nodes (no ``ray_address``) have every one of their
servers (GCS, raylets, workers, agents) listen on loopback only, and no dashboard. Secrets
never travel in Ray's runtime environment, whose variables Ray keeps in its state
(``ray list actors --detail``) and logs: the replicas get the non-secret settings only, and
each process reads the secrets itself, from ``secrets.json`` under ``RADCLOUD_HOME``, the TOML
file of ``RADCLOUD_CONFIG_FILE`` or the environment it inherits from this process (a local Ray's
workers are its children; radcloud's own nodes inherit the environment of ``radcloud up``).

HTTPS: with ``api_tls_certificate`` and ``api_tls_private_key``, Serve's proxy speaks only TLS.

Resources: model replicas declare ``serving_cpus_per_model_replica`` CPUs and, when the cluster
has GPUs, ``serving_gpus_per_model_replica`` GPUs (fractions share one card); the API and the
triage workers take a quarter CPU each, so the whole application fits a 2-core machine.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

from core.config import ENV_PREFIX, Settings, is_loopback_host
from serving._ray_loopback import SETUP_HOOK
from serving.exceptions import ServingError
from serving.ray_node import AUTH_MODE_ENV, WORKER_NICENESS, WORKER_NICENESS_ENV

__all__ = ["build_application", "http_options", "proxy_location", "serve_forever"]

logger = logging.getLogger(__name__)

_SMALL_CPU = 0.25
_NAMESPACE = "radcloud"


# Read by Ray at import: off, a node's IP is the loopback address, and Ray's servers bind to it.
_RAY_CLUSTER_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _runtime_env(settings: Settings) -> dict[str, Any]:
    """The replicas' runtime environment: the non-secret settings (never a secret: Ray shows
    runtime environments in its state API and logs), and the config file, by absolute path."""
    from core.config import CONFIG_FILE_ENV, config_file, secret_setting_names, settings_env

    env = settings_env(settings)
    secret = {f"{ENV_PREFIX}{name.upper()}" for name in secret_setting_names()}
    for name, value in os.environ.items():  # overrides that are not settings fields
        if name.startswith(ENV_PREFIX) and name not in secret:
            env.setdefault(name, value)
    toml = config_file()
    if toml is not None:  # a replica's working directory is not ours
        env[CONFIG_FILE_ENV] = str(toml.absolute())
    env["TCP_NODELAY"] = "1"
    if settings.ray_on_loopback:  # one machine: Serve's replica servers on loopback too
        # Ray takes runtime_env["worker_process_setup_hook"] only for a whole job; per actor,
        # the variable it would set is what its workers read at start.
        from ray._private.ray_constants import WORKER_PROCESS_SETUP_HOOK_ENV_VAR

        env[WORKER_PROCESS_SETUP_HOOK_ENV_VAR] = SETUP_HOOK
    return {"env_vars": env}


def _start_local_ray(settings: Settings) -> None:
    """A Ray of this machine alone: every server on loopback, no dashboard.

    Raises
    ------
    ServingError
        Ray was imported before with clusters on, so its servers would listen beyond loopback.
    """
    os.environ[_RAY_CLUSTER_ENV] = "0"
    os.environ.setdefault(WORKER_NICENESS_ENV, WORKER_NICENESS)
    import ray

    ray.init(
        # "local": a new Ray of our own even when this machine runs another (a `ray start`
        # leaves its address in /tmp/ray/ray_current_cluster, which ray.init() would join)
        address="local",
        num_cpus=settings.ray_num_cpus or os.cpu_count(),
        include_dashboard=False,
        namespace=_NAMESPACE,
        logging_level=logging.WARNING,
    )
    node_ip: str = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
    if not is_loopback_host(node_ip):
        ray.shutdown()
        raise ServingError(
            f'the local Ray node took address "{node_ip}": expected loopback (Ray was imported '
            f"before {_RAY_CLUSTER_ENV}=0 was set)"
        )


def _cluster_gpus() -> float:
    import ray

    resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
    return float(resources.get("GPU", 0.0))


def _deployment(decorated: Any) -> Any:
    """A ``@serve.deployment`` class (typed as the class it decorates)."""
    return decorated


def model_deployment_options(
    settings: Settings, name: str, *, gpus: float, runtime_env: dict[str, Any]
) -> dict[str, Any]:
    """``.options()`` of model ``name``'s ``ModelServer`` deployment (the benchmarks use them
    too, so that they measure what is served).

    ``max_ongoing_requests`` is 8x the model's batch size, at least 64: well above the batch, or
    batches never fill (Ray issue #43288), and above the callers expected, because once every
    replica is at its limit Ray Serve's router retries with back-off (50 ms doubling to 1 s)
    instead of queueing: measured, 32 closed-loop callers against a limit of 16 got a p95 of
    1.3-1.9 s and a fifth of the throughput of 16 callers (``benchmarks/README.md``).
    """
    from serving.deployments import batch_size

    options: dict[str, Any] = {
        "name": f"model-{name}",
        "ray_actor_options": {
            "num_cpus": settings.serving_cpus_per_model_replica,
            "num_gpus": gpus,
            "runtime_env": runtime_env,
        },
        "max_ongoing_requests": max(8 * batch_size(settings, name), 64),
    }
    if settings.serving_max_replicas > settings.serving_min_replicas:
        options["autoscaling_config"] = {
            "min_replicas": settings.serving_min_replicas,
            "max_replicas": settings.serving_max_replicas,
            "target_ongoing_requests": settings.serving_target_ongoing_requests,
            "upscale_delay_s": settings.serving_upscale_delay_s,
            "downscale_delay_s": settings.serving_downscale_delay_s,
        }
    else:
        options["num_replicas"] = settings.serving_min_replicas
    return options


def build_application(settings: Settings) -> Any:
    """The Serve application graph for ``settings``: one model deployment per registered model
    name, whether or not it has a production version yet (its replicas load versions when
    asked, so a first promotion needs no new deployment)."""
    from models.registry import ModelRegistry
    from serving.deployments import ModelServer, TriageWorker, api_ingress_class

    runtime_env = _runtime_env(settings)
    gpus = settings.serving_gpus_per_model_replica if settings.serving_device != "cpu" else 0.0
    if _cluster_gpus() <= 0:
        gpus = 0.0
    registry = ModelRegistry(settings.paths.models_dir)
    models: dict[str, Any] = {}
    for name in registry.names():  # with or without a production version: see ModelServer
        options = model_deployment_options(settings, name, gpus=gpus, runtime_env=runtime_env)
        models[name] = _deployment(ModelServer).options(**options).bind(name)
    logger.info("serving models: %s", ", ".join(models) or "none registered")
    small = {"num_cpus": _SMALL_CPU, "runtime_env": runtime_env}
    triage = (
        _deployment(TriageWorker)
        .options(name="triage", num_replicas=settings.triage_workers, ray_actor_options=small)
        .bind(models)
    )
    return api_ingress_class().options(name="api", ray_actor_options=small).bind(models, triage)


def http_options(settings: Settings) -> dict[str, Any]:
    """Serve's proxy: ``bind_host:api_port``, HTTPS with the API's certificate when set."""
    options: dict[str, Any] = {"host": settings.bind_host, "port": settings.api_port}
    if settings.api_tls_enabled:
        options["ssl_certfile"] = str(settings.api_tls_certificate)
        options["ssl_keyfile"] = str(settings.api_tls_private_key)
    return options


def proxy_location(settings: Settings) -> str:
    """Where Serve runs its HTTP proxies: on the head node alone when the nodes share this
    machine (``ray_nodes`` > 1: they would all bind ``bind_host:api_port``), else on every
    node (Serve's default; each machine of a joined cluster answers on ``api_port``)."""
    return "HeadOnly" if settings.ray_nodes > 1 else "EveryNode"


def _release_stale_claims(settings: Settings) -> None:
    """No triage worker runs yet: leases of the last serving's workers are stale."""
    from core.db import Database, upgrade
    from serving.triage import release_claims

    db = Database.from_settings(settings)
    try:
        upgrade(db)
        release_claims(db)
    finally:
        db.dispose()


def serve_forever(settings: Settings, stop: threading.Event | None = None) -> None:
    """Start (or join) Ray, deploy the application, and block until SIGTERM/SIGINT or ``stop``."""
    if settings.ray_on_loopback:  # before Ray is imported: it reads them then
        os.environ[_RAY_CLUSTER_ENV] = "0"  # see _start_local_ray
        if settings.ray_cluster_address:  # radcloud's own nodes (serving.ray_node)
            os.environ.setdefault(AUTH_MODE_ENV, "token")
    import ray
    from ray import serve

    from serving._body_limit import PROXY_CALLBACK

    stop = stop or threading.Event()
    # Ray Serve's proxy buffers request bodies before the replica sees them: it gets the same
    # body budget (serving/_body_limit.py). Read by Ray's processes, which a local cluster
    # starts with this environment; a joined cluster needs it set where its head started.
    os.environ.setdefault("RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH", PROXY_CALLBACK)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    address = settings.ray_cluster_address
    if address:
        ray.init(address=address, namespace=_NAMESPACE, logging_level=logging.WARNING)
    else:
        _start_local_ray(settings)
    try:
        _release_stale_claims(settings)
        serve.start(http_options=http_options(settings), proxy_location=proxy_location(settings))
        serve.run(build_application(settings), name="radcloud", route_prefix="/", blocking=False)
        logger.info("radcloud serving on %s", settings.api_url)
        stop.wait()
    finally:
        logger.info("shutting down Serve")
        try:
            serve.shutdown()  # type: ignore[no-untyped-call]
        finally:
            ray.shutdown()
