"""``python -m serving``: the Ray Serve application (API ingress, models, triage workers)."""

from __future__ import annotations

import logging

from core.config import load_settings
from serving.application import serve_forever


def main() -> None:
    """Run until SIGTERM."""
    settings = load_settings()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    serve_forever(settings)


if __name__ == "__main__":
    main()
