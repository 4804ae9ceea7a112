"""radcloud's HTTP API: routes, authentication dependencies and error mapping."""

from serving.api.app import create_app

__all__ = ["create_app"]
