"""radcloud's shell: the ``radcloud`` command line, the process supervisor and the demo. It sits
on top of the product's parts and imports them; nothing imports it (``docs/architecture.md``)."""

from core import __version__

__all__ = ["__version__"]
