import pytest
import torch
from torch import nn


class TinySegNet(nn.Module):
    """Two 3^3 convolutions; optional BatchNorm to exercise buffers and batch coupling."""

    def __init__(self, in_channels=1, out_channels=3, width=4, batchnorm=False):
        super().__init__()
        norm = nn.BatchNorm3d(width) if batchnorm else nn.InstanceNorm3d(width, affine=True)
        self.body = nn.Sequential(nn.Conv3d(in_channels, width, 3, padding=1), norm, nn.LeakyReLU())
        self.head = nn.Conv3d(width, out_channels, 1)

    def forward(self, x):
        return self.head(self.body(x))


@pytest.fixture
def tiny_net():
    torch.manual_seed(0)
    return TinySegNet()


@pytest.fixture
def batch():
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(2, 1, 16, 16, 16, generator=gen)
    labels = torch.randint(0, 3, (2, 1, 16, 16, 16), generator=gen)
    return images, labels


@pytest.fixture
def make_net():
    """Factory for TinySegNet with a fixed seed."""

    def factory(**kwargs):
        torch.manual_seed(0)
        return TinySegNet(**kwargs)

    return factory
