"""A minimal HTTP ingress for the serving benchmark: raw float32 bytes in, logits out.

radcloud's own ``POST /api/infer/{model}`` takes DICOM or NIfTI uploads and pre-processes them,
which is far too heavy to saturate a model; this ingress measures what Serve's HTTP proxy and one
extra hop add to the deployment handle path, nothing else. Benchmark only: no authentication.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ray import serve
from starlette.requests import Request
from starlette.responses import Response

__all__ = ["RawIngress"]


@serve.deployment
class RawIngress:
    """``POST`` a C-ordered float32 array of the model's input shape; get float32 logits."""

    def __init__(self, model: Any, shape: tuple[int, ...]) -> None:
        self.model = model
        self.shape = tuple(shape)

    async def __call__(self, request: Request) -> Response:
        """Run one input through the model deployment."""
        body = await request.body()
        array = np.frombuffer(body, dtype=np.float32).reshape(self.shape)
        logits, _ = await self.model.predict.remote(array)
        payload = np.ascontiguousarray(logits, dtype=np.float32).tobytes()
        return Response(payload, media_type="application/octet-stream")
