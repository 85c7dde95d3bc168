"""The built-in workload of `torchrepro cost`: a small CNN that does not repeat on CUDA."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


class _FieldModel(nn.Module):
    """A CNN whose CUDA kernels do not repeat: conv, `index_add_`, bilinear, adaptive pool."""

    def __init__(self, channels: int = 16, classes: int = 10, edges: int = 512) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect")
        self.pool = nn.AdaptiveAvgPool2d(5)
        self.head = nn.Linear(channels * 25, classes)
        generator = torch.Generator().manual_seed(0)
        self.src: torch.Tensor
        self.dst: torch.Tensor
        self.register_buffer("src", torch.randint(0, 256, (edges,), generator=generator))
        self.register_buffer("dst", torch.randint(0, 256, (edges,), generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv1(x))  # (N, C, 16, 16): 256 nodes per image
        nodes = h.flatten(2)
        messages = torch.zeros_like(nodes).index_add_(2, self.dst, nodes.index_select(2, self.src))
        h = h + messages.view_as(h)
        h = F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False)
        h = torch.relu(self.conv2(h))
        return self.head(self.pool(h).flatten(1))  # type: ignore[no-any-return]


def example_workload(
    device: str | torch.device = "cpu", batch_size: int = 8
) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor], Callable[..., torch.Tensor]]:
    """The CNN that does not repeat on CUDA, with a batch and a loss, for cost reports.

    Conv, `index_add_` message passing, bilinear upsampling, reflection padding and
    adaptive average pooling, on 16x16 images; built from a fixed seed without touching
    the global RNG.

    Examples:
        >>> model, (x, y), loss_fn = example_workload()
        >>> loss_fn(model(x), y).shape
        torch.Size([])
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = _FieldModel().to(device)
        x = torch.randn(batch_size, 3, 16, 16).to(device)
        y = torch.randint(0, 10, (batch_size,)).to(device)
    return model, (x, y), F.cross_entropy
