"""ResNets in the torchvision key layout, 1-channel stem, no `fc`: resnet18 (at any width: the CPU demo's
backbone) and resnet50, with three stems (RESNET_STEM_LAYOUT) for small images.

    backbone = resnet("resnet18", width=8, stem="imagenet")   # [B, 1, H, W] -> [B, 8 * width] pooled features
"""

import torch
import torch.nn as nn

from .backbone import Backbone, init_generator
from .config import RESNET_STEMS  # the stems a config may choose; RESNET_STEM_LAYOUT builds each

def _conv_out(hw, conv):
    """Output (H, W) of a convolution: floor((in + 2p - k) / s) + 1 per axis."""
    return tuple((n + 2 * p - k) // s + 1 for n, k, s, p in zip(hw, conv.kernel_size, conv.stride, conv.padding))


def _conv_macs(conv, hw):
    """(multiply-adds, output (H, W)) of one convolution on an hw input."""
    out = _conv_out(hw, conv)
    k_h, k_w = conv.kernel_size
    return out[0] * out[1] * conv.out_channels * (conv.in_channels // conv.groups) * k_h * k_w, out


class BasicBlock(nn.Module):
    """ResNet-18/34 block: 3x3 (carries the stride) -> 3x3, plus a projected shortcut when the shape changes."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def convs(self):
        return [self.conv1, self.conv2]

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (carries the stride) -> 1x1 expand (x4), plus a projected shortcut when needed."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        outplanes = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, outplanes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(outplanes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != outplanes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, outplanes, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(outplanes))

    def convs(self):
        return [self.conv1, self.conv2, self.conv3]

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


# name -> (block, blocks per stage)
RESNETS = {"resnet18": (BasicBlock, (2, 2, 2, 2)), "resnet50": (Bottleneck, (3, 4, 6, 3))}
# conv1 kernel, conv1 stride, 3x3/2 max pool: "imagenet" divides the image by 4 before layer1 (torchvision),
# "cifar" keeps every pixel (the small-image ResNets of SimCLR / solo-learn / lightly), "half" divides by 2
RESNET_STEM_LAYOUT = {"imagenet": (7, 2, True), "half": (3, 1, True), "cifar": (3, 1, False)}


class ResNet(Backbone):
    """torchvision-layout ResNet, 1-channel stem, no `fc`: returns the globally pooled feature.

    `width` is the channel count of the first stage (torchvision: 64); stage k has width * 2^(k-1) planes.
    `stem` (RESNET_STEM_LAYOUT) sets how much conv1 + max pool shrink the image before layer1: 4x (torchvision),
    2x or 1x (the small-image ResNets of CIFAR recipes). A narrower net or another stem keeps every key name and
    only changes shapes, so the layout still reads as torchvision's.
    """

    def __init__(self, block=Bottleneck, layers=(3, 4, 6, 3), in_chans: int = 1, width: int = 64, generator=None,
                 stem: str = "imagenet"):
        super().__init__()
        if stem not in RESNET_STEM_LAYOUT:
            raise ValueError(f"unknown ResNet stem {stem!r}; expected one of {list(RESNET_STEMS)}")
        self.in_chans, self.width, self.stem = in_chans, width, stem
        kernel, stride, pool = RESNET_STEM_LAYOUT[stem]
        self.conv1 = nn.Conv2d(in_chans, width, kernel_size=kernel, stride=stride, padding=kernel // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if pool else nn.Identity()
        inplanes = width
        for k, n_blocks in enumerate(layers, start=1):
            planes = width * 2 ** (k - 1)
            blocks = []
            for i in range(n_blocks):
                blocks.append(block(inplanes, planes, (1 if k == 1 else 2) if i == 0 else 1))
                inplanes = planes * block.expansion
            setattr(self, f"layer{k}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.embed_dim = inplanes
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator=None):
        g = init_generator(generator)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=g)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
                m.reset_running_stats()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 1, H, W] -> globally average-pooled feature [B, embed_dim]."""
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"ResNet expects input [B,{self.in_chans},H,W], got {tuple(x.shape)}")
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.avgpool(x).flatten(1)

    def flops_per_image(self, img_size) -> int:
        """Forward FLOPs = 2 * sum over convolutions of (out_h * out_w * C_out * C_in/groups * k_h * k_w).

        Spatial sizes are propagated with the convolution arithmetic out = floor((in + 2p - k) / s) + 1.
        BatchNorm, ReLU, pooling and the residual additions are ignored (no multiply-adds of a matmul).
        """
        hw = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        total, hw = _conv_macs(self.conv1, hw)
        if isinstance(self.maxpool, nn.MaxPool2d):
            hw = tuple((n + 2 - 3) // 2 + 1 for n in hw)              # max pool 3x3, stride 2, padding 1
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in layer:
                block_in = hw
                for conv in block.convs():
                    macs, hw = _conv_macs(conv, hw)
                    total += macs
                if block.downsample is not None:
                    total += _conv_macs(block.downsample[0], block_in)[0]
        return 2 * total


def resnet(arch: str, in_chans: int = 1, width: int = 64, generator=None, stem: str = "imagenet") -> ResNet:
    block, layers = RESNETS[arch]
    return ResNet(block, layers, in_chans=in_chans, width=width, generator=generator, stem=stem)


def resnet50(in_chans: int = 1, generator=None) -> ResNet:
    return resnet("resnet50", in_chans, generator=generator)
