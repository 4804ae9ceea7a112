"""radcloud's platform core: settings, secrets, the application database, security, audit,
exceptions and the image archive seam. It imports no product package (``docs/architecture.md``)."""

__version__ = "0.1.0"
