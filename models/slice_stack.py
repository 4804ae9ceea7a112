"""A 2.5D segmenter: a 2D MONAI UNet that sees each axial slice with its neighbours.

Head CT is acquired as thick axial slices (4-5 mm, 1.8-2 mm pixels), so a 3D network spends
most of its compute across an axis that carries little detail; a 2D network over three-slice
stacks costs a fraction of a 3D one per volume (no comparison of their quality on this task is
committed: ``training/results/`` holds what is measured).

The network takes and returns volumes like a 3D segmenter, ``(batch, 1, H, W, D)`` →
``(batch, out, H, W, D)``, so evaluation, ONNX export and serving treat it as one; training
feeds it slice stacks directly, ``(n, 2·context+1, H, W)`` → ``(n, out, H, W)``
(:class:`SliceStackd` makes them from 3D crops).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.networks.nets import UNet
from monai.transforms import MapTransform
from torch import nn
from torch.nn import functional

__all__ = ["SliceStackUNet", "SliceStackd", "slice_stacks"]


def slice_stacks(volume: torch.Tensor, context: int) -> torch.Tensor:
    """``(batch, 1, H, W, D)`` → ``(batch·D, 2·context+1, H, W)``: every axial slice with its
    ``context`` neighbours on each side as channels (edge slices repeat at the ends)."""
    batch, _, height, width, depth = volume.shape
    padded = functional.pad(volume, (context, context, 0, 0, 0, 0), mode="replicate")
    stacks = torch.cat([padded[..., k : k + depth] for k in range(2 * context + 1)], dim=1)
    return stacks.permute(0, 4, 1, 2, 3).reshape(batch * depth, 2 * context + 1, height, width)


class SliceStackUNet(nn.Module):
    """2D residual UNet over axial slice stacks (2.5D).

    Parameters
    ----------
    context
        Neighbouring slices on each side given as extra channels.
    out_channels
        Output classes (2: background, lesion).
    channels, strides, num_res_units
        As :class:`monai.networks.nets.UNet` (2D).
    """

    def __init__(
        self,
        context: int = 1,
        out_channels: int = 2,
        channels: Sequence[int] = (32, 64, 128, 256),
        strides: Sequence[int] = (2, 2, 2),
        num_res_units: int = 2,
    ) -> None:
        super().__init__()
        self.context = context
        self.out_channels = out_channels
        self.net = UNet(
            spatial_dims=2,
            in_channels=2 * context + 1,
            out_channels=out_channels,
            channels=tuple(channels),
            strides=tuple(strides),
            num_res_units=num_res_units,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Volumes ``(batch, 1, H, W, D)`` or slice stacks ``(n, 2·context+1, H, W)``."""
        if x.dim() == 4:
            stack_logits: torch.Tensor = self.net(x)
            return stack_logits
        batch, _, height, width, depth = x.shape
        logits: torch.Tensor = self.net(slice_stacks(x, self.context))
        return logits.reshape(batch, depth, self.out_channels, height, width).permute(0, 2, 3, 4, 1)


class SliceStackd(MapTransform):
    """Dictionary transform: a 3D crop of ``2·context+1`` slices → one training sample.

    ``image`` ``(1, H, W, 2·context+1)`` becomes ``(2·context+1, H, W)``; the label keys become
    their middle slice ``(1, H, W)``.
    """

    def __init__(self, image_key: str, label_keys: Sequence[str], context: int) -> None:
        super().__init__([image_key, *label_keys])
        self.image_key = image_key
        self.label_keys = list(label_keys)
        self.context = context

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        item = dict(data)
        image = torch.as_tensor(item[self.image_key])
        if image.shape[0] != 1 or image.shape[-1] != 2 * self.context + 1:
            raise ValueError(
                f"SliceStackd expects (1, H, W, {2 * self.context + 1}), got {tuple(image.shape)}"
            )
        item[self.image_key] = image[0].permute(2, 0, 1).contiguous()
        for key in self.label_keys:
            item[key] = torch.as_tensor(item[key])[..., self.context].contiguous()
        return item
