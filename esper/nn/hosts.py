"""Host models: the default small 1-D CNN for MNIST-1D, an MLP, and a 4-block 2-D CNN for 32x32 images.

Each host keeps its blocks in ``blocks`` (so ``blocks.0``, ``blocks.1`` ... are natural wrap targets) and lists
them in ``slot_targets``. Deliberately small: the point is to grow them.
"""

from __future__ import annotations

from typing import final

from torch import Tensor, nn

__all__ = ["CNN1dHost", "CNN2dHost", "ConvBlock1d", "ConvBlock2d", "MLPHost"]


@final
class ConvBlock1d(nn.Module):
    """Conv1d (kernel 5, ``stride``) -> BatchNorm1d -> ReLU; ``[batch, in_ch, length] -> [batch, out_ch, length']``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size=5, stride=stride, padding=2, bias=False)
        self.norm = nn.BatchNorm1d(out_channels)
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        result: Tensor = self.act(self.norm(self.conv(x)))
        return result


@final
class ConvBlock2d(nn.Module):
    """Conv2d 3x3 -> BatchNorm2d -> ReLU -> MaxPool 2x2; ``[batch, in_ch, H, W] -> [batch, out_ch, H/2, W/2]``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU()
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: Tensor) -> Tensor:
        result: Tensor = self.pool(self.act(self.norm(self.conv(x))))
        return result


@final
class CNN1dHost(nn.Module):
    """The default MNIST-1D host: 3 conv blocks (stride 1, 2, 2) of ``width`` channels, then a linear head.

    Input ``[batch, length]`` or ``[batch, 1, length]`` (length 40 for MNIST-1D), float32; output logits
    ``[batch, num_classes]``. About 3k parameters at width 12.
    """

    def __init__(self, length: int = 40, num_classes: int = 10, width: int = 12) -> None:
        super().__init__()
        if length < 4 or num_classes < 2 or width < 1:
            raise ValueError(
                f"CNN1dHost: need length >= 4, num_classes >= 2, width >= 1; got {length}, {num_classes}, {width}"
            )
        self.blocks = nn.Sequential(
            ConvBlock1d(1, width, 1), ConvBlock1d(width, width, 2), ConvBlock1d(width, width, 2)
        )
        out_len = (((length + 1) // 2) + 1) // 2
        self.head = nn.Linear(width * out_len, num_classes)
        self.slot_targets: tuple[str, ...] = ("blocks.0", "blocks.1", "blocks.2")

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(1)
        result: Tensor = self.head(self.blocks(x).flatten(1))
        return result


@final
class CNN2dHost(nn.Module):
    """4 conv blocks (widths ``widths``, each halving H and W), global average pool, linear head.

    Input ``[batch, in_channels, 32, 32]`` float32 (any H, W divisible by 16 work); output ``[batch, num_classes]``.
    """

    def __init__(
        self, in_channels: int = 3, num_classes: int = 10, widths: tuple[int, int, int, int] = (16, 32, 64, 64)
    ) -> None:
        super().__init__()
        chans = (in_channels, *widths)
        self.blocks = nn.Sequential(*(ConvBlock2d(chans[i], chans[i + 1]) for i in range(4)))
        self.head = nn.Linear(widths[-1], num_classes)
        self.slot_targets: tuple[str, ...] = ("blocks.0", "blocks.1", "blocks.2", "blocks.3")

    def forward(self, x: Tensor) -> Tensor:
        result: Tensor = self.head(self.blocks(x).mean(dim=(2, 3)))
        return result


@final
class MLPHost(nn.Module):
    """``depth`` blocks of Linear -> ReLU (each an ``nn.Sequential``), then a linear head.

    Input ``[batch, in_features]`` (or anything that flattens to it from dim 1); output ``[batch, num_classes]``.
    """

    def __init__(self, in_features: int = 40, num_classes: int = 10, hidden: int = 64, depth: int = 3) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"MLPHost: depth must be >= 1, got {depth}")
        dims = (in_features, *([hidden] * depth))
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(dims[i], dims[i + 1]), nn.ReLU()) for i in range(depth))
        self.head = nn.Linear(hidden, num_classes)
        self.slot_targets: tuple[str, ...] = tuple(f"blocks.{i}" for i in range(depth))

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        for block in self.blocks:
            x = block(x)
        result: Tensor = self.head(x)
        return result
