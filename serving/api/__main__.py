"""``python -m serving.api``: run the HTTP API in the foreground (the supervisor's command)."""

from __future__ import annotations

import logging

import uvicorn

from core.config import load_settings
from serving.api.app import create_app


def main() -> None:
    """Serve the API on ``bind_host:api_port`` (HTTPS with ``api_tls_*``) until SIGTERM."""
    settings = load_settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(name)s: %(message)s")
    uvicorn.run(
        create_app(settings),
        host=settings.bind_host,
        port=settings.api_port,
        log_level=settings.log_level.lower(),
        proxy_headers=False,
        ssl_certfile=settings.api_tls_certificate,
        ssl_keyfile=settings.api_tls_private_key,
    )


if __name__ == "__main__":
    main()
