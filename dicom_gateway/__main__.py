"""``python -m dicom_gateway``: run the gateway in the foreground (the supervisor's command)."""

from __future__ import annotations

import logging

from core.config import load_settings
from dicom_gateway.service import GatewayService
from dicom_gateway.validation import lenient_reading


def main() -> None:
    """Run the gateway until SIGTERM."""
    settings = load_settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, logging.root.level))
    logging.getLogger("httpx").setLevel(logging.WARNING)
    lenient_reading()
    GatewayService(settings).run()


if __name__ == "__main__":
    main()
