"""Tests of the ``models`` package: networks, export and parity, cards, the registry, its CLI."""
