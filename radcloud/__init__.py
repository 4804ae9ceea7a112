"""radcloud's platform core: settings, secrets, the application database, security, audit,
Orthanc and process supervision, and the ``radcloud`` command line."""

__version__ = "0.1.0"
