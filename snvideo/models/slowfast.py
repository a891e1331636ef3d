"""SlowFast networks (Feichtenhofer et al., ICCV 2019) with any normalization, as PySlowFast
builds them, taking one clip and making both pathways inside the model.

Facts (PySlowFast `video_model_builder.SlowFast`, `resnet_helper`, `stem_helper`,
`head_helper.ResNetBasicHead`, `datasets/utils.pack_pathway_output`):
- Input: the Fast pathway sees all T frames; the Slow pathway the frames
  linspace(0, T - 1, T // alpha) rounded down (so 32 frames, alpha 4: 0, 4, 8, 13, 17, 22, 26,
  31, not every 4th frame). T must be a multiple of alpha, or the lateral and Slow lengths
  differ.
- Channels: the Slow pathway has ResNet widths (stem 64, stages 256..2048 out, 64..512 inner);
  the Fast pathway 1 / beta_inv of them. Stem: (kt, 7, 7) conv, stride (1, 2, 2), + norm + ReLU
  + max-pool 1x3x3 stride (1, 2, 2); kt = 1 Slow, 5 Fast.
- Bottleneck: (kt, 1, 1) conv `a`, 1x3x3 conv `b` with the spatial stride, 1x1x1 conv `c`;
  shortcut `branch1` (1x1x1 conv with the stride + norm) where the shape changes. kt per stage
  (res2..res5): Slow 1, 1, 3, 3; Fast 3, 3, 3, 3, for every block of the stage (R101 8x8 too:
  PySlowFast's SLOWFAST_8x8_R101_101_101 and pytorchvideo's slowfast_r101).
- Lateral fusion after the stem and after res2, res3, res4: conv (fusion_kernel, 1, 1),
  temporal stride alpha, padding fusion_kernel // 2, Fast channels C -> 2C, + norm + ReLU,
  concatenated after the Slow channels; the next Slow stage takes C_slow + 2 C_fast channels.
- PySlowFast's max-pool after res2 (`pathway{0,1}_pool`) has kernel 1 for SlowFast, an
  identity without parameters, so it is left out.
- Head: each pathway globally averaged, concatenated (2048 + 256), dropout, `fc`
  (PySlowFast's `head.projection`). PySlowFast's head average-pools a fixed window (its
  NUM_FRAMES and training crop / 32) and, in eval, averages softmax scores over the window's
  positions; ours pools globally and returns logits: the same as PySlowFast's logits at its
  training input (32 x 224 x 224 for the zoo models), not quite at its 256 test crop (there it
  averages four overlapping 7 x 7 windows).
- At 400 classes: R50 8x8 34.57M parameters, R50 4x16 34.48M, R101 8x8 (fusion_kernel 5)
  62.83M, as the PySlowFast / PyTorchVideo zoo; GFLOPs per view: info.py.

Module names are PySlowFast's (s1.pathway0_stem.conv, s1_fuse.conv_f2s,
s2.pathway1_res0.branch2.a_bn, ...) whatever the norm kind, so a PySlowFast checkpoint loads
by name (pretrained.py; only `head.projection` becomes `fc`).

alpha / beta_inv / fusion_kernel: PySlowFast's 8x8 are 4 / 8 / 7, its 4x16 8 / 8 / 5. Its R101
8x8 (and pytorchvideo's) use fusion_kernel 5: pass it to load those weights.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .common import NormFactory, init_weights, run_blocks, zero_init_last_norms
from .freeze import keep_frozen_norms_in_eval

Pair = tuple[Tensor, Tensor]  # (slow, fast) feature maps
FUSION_CHANNEL_RATIO = 2      # a lateral turns C Fast channels into 2C (FUSION_CONV_CHANNEL_RATIO)


@dataclass(frozen=True)
class SlowFastSpec:
    depths: tuple[int, int, int, int]
    # temporal kernel of the stem conv and of conv `a` of every block of res2..res5 (PySlowFast's
    # _TEMPORAL_KERNEL_BASIS["slowfast"])
    slow_kernels_t: tuple[int, int, int, int, int] = (1, 1, 1, 3, 3)
    fast_kernels_t: tuple[int, int, int, int, int] = (5, 3, 3, 3, 3)
    spatial_strides: tuple[int, int, int, int] = (1, 2, 2, 2)
    width: int = 64  # Slow stem channels; stage i has inner width * 2^i, output 4x that


SLOWFAST_SPECS: dict[str, SlowFastSpec] = {
    "slowfast_r50": SlowFastSpec((3, 4, 6, 3)),
    "slowfast_r101": SlowFastSpec((3, 4, 23, 3)),
}


def slow_frame_indices(num_frames: int, alpha: int, device: torch.device | None = None) -> Tensor:
    """The frames of a clip the Slow pathway sees: PySlowFast's pack_pathway_output."""
    return torch.linspace(0, num_frames - 1, num_frames // alpha, device=device).long()


class PathwayStem(nn.Module):
    """conv (kt, 7, 7) stride (1, 2, 2) + norm + ReLU + max-pool 1x3x3 stride (1, 2, 2)."""

    def __init__(self, out_ch: int, kernel_t: int, make_norm: NormFactory) -> None:
        super().__init__()
        self.conv = nn.Conv3d(3, out_ch, (kernel_t, 7, 7), stride=(1, 2, 2),
                              padding=(kernel_t // 2, 3, 3), bias=False)
        self.bn = make_norm(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.pool_layer = nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.pool_layer(self.relu(self.bn(self.conv(x))))


class SlowFastStem(nn.Module):
    def __init__(self, channels: tuple[int, int], kernels_t: tuple[int, int],
                 make_norm: NormFactory) -> None:
        super().__init__()
        self.pathway0_stem = PathwayStem(channels[0], kernels_t[0], make_norm)
        self.pathway1_stem = PathwayStem(channels[1], kernels_t[1], make_norm)

    def forward(self, slow: Tensor, fast: Tensor) -> Pair:
        return self.pathway0_stem(slow), self.pathway1_stem(fast)


class FastToSlow(nn.Module):
    """The lateral connection: Fast features, strided in time by alpha, joined to the Slow ones."""

    def __init__(self, fast_ch: int, kernel_t: int, alpha: int, make_norm: NormFactory) -> None:
        super().__init__()
        out_ch = fast_ch * FUSION_CHANNEL_RATIO
        self.conv_f2s = nn.Conv3d(fast_ch, out_ch, (kernel_t, 1, 1), stride=(alpha, 1, 1),
                                  padding=(kernel_t // 2, 0, 0), bias=False)
        self.bn = make_norm(out_ch)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, slow: Tensor, fast: Tensor) -> Pair:
        lateral = self.relu(self.bn(self.conv_f2s(fast)))
        return torch.cat([slow, lateral], dim=1), fast


class Bottleneck(nn.Module):
    """(kt, 1, 1) `a`, 1x3x3 `b` with the spatial stride, 1x1x1 `c` (PySlowFast's branch2)."""

    def __init__(self, in_ch: int, inner: int, out_ch: int, kernel_t: int, stride: int,
                 make_norm: NormFactory) -> None:
        super().__init__()
        self.a = nn.Conv3d(in_ch, inner, (kernel_t, 1, 1), padding=(kernel_t // 2, 0, 0),
                           bias=False)
        self.a_bn = make_norm(inner)
        self.b = nn.Conv3d(inner, inner, (1, 3, 3), stride=(1, stride, stride),
                           padding=(0, 1, 1), bias=False)
        self.b_bn = make_norm(inner)
        self.c = nn.Conv3d(inner, out_ch, 1, bias=False)
        self.c_bn = make_norm(out_ch)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.a_bn(self.a(x)))
        x = self.relu(self.b_bn(self.b(x)))
        return self.c_bn(self.c(x))


class ResBlock(nn.Module):
    """relu(branch2(x) + shortcut); shortcut = branch1 (1x1x1 conv + norm) where the shape
    changes, else x."""

    def __init__(self, in_ch: int, inner: int, out_ch: int, kernel_t: int, stride: int,
                 make_norm: NormFactory) -> None:
        super().__init__()
        self.branch1 = self.branch1_bn = None
        if in_ch != out_ch or stride != 1:
            self.branch1 = nn.Conv3d(in_ch, out_ch, 1, stride=(1, stride, stride), bias=False)
            self.branch1_bn = make_norm(out_ch)
        self.branch2 = Bottleneck(in_ch, inner, out_ch, kernel_t, stride, make_norm)
        self.relu = nn.ReLU(inplace=True)

    @property
    def last_norm(self) -> nn.Module:
        return self.branch2.c_bn

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.branch1 is None else self.branch1_bn(self.branch1(x))
        return self.relu(self.branch2(x) + shortcut)


@dataclass(frozen=True)
class PathwayPlan:
    """One pathway's part of a stage: channels in, inner, out; conv `a`'s temporal kernel."""

    in_ch: int
    inner: int
    out_ch: int
    kernel_t: int


class SlowFastStage(nn.Module):
    """`depth` blocks per pathway, named pathway{0,1}_res{i}; the first carries the stride."""

    def __init__(self, depth: int, plans: tuple[PathwayPlan, PathwayPlan], stride: int,
                 make_norm: NormFactory) -> None:
        super().__init__()
        self.depth = depth
        for p, plan in enumerate(plans):
            for i in range(depth):
                self.add_module(f"pathway{p}_res{i}", ResBlock(
                    plan.in_ch if i == 0 else plan.out_ch, plan.inner, plan.out_ch,
                    plan.kernel_t, stride if i == 0 else 1, make_norm))

    def blocks(self, pathway: int) -> list[nn.Module]:
        return [getattr(self, f"pathway{pathway}_res{i}") for i in range(self.depth)]

    def forward(self, slow: Tensor, fast: Tensor, checkpointed: bool = False) -> Pair:
        checkpointed = checkpointed and self.training
        return (run_blocks(self.blocks(0), slow, checkpointed),
                run_blocks(self.blocks(1), fast, checkpointed))


class SlowFast(nn.Module):
    """(N, 3, T, H, W) clips -> (N, num_classes) logits; T a multiple of alpha."""

    checkpoint_names = "pyslowfast"  # load_pretrained: PySlowFast names, head.projection = fc

    def __init__(self, spec: SlowFastSpec, num_classes: int, make_norm: NormFactory,
                 dropout: float = 0.5, alpha: int = 4, beta_inv: int = 8, fusion_kernel: int = 7,
                 widen_factor: float = 1.0, zero_init_last_norm: bool = False,
                 checkpoint_stages: bool = False) -> None:
        super().__init__()
        for name, value in (("alpha", alpha), ("beta_inv", beta_inv),
                            ("fusion_kernel", fusion_kernel)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if fusion_kernel % 2 == 0:
            raise ValueError(f"fusion_kernel must be odd (the lateral keeps T / alpha frames), "
                             f"got {fusion_kernel}")
        width = round(spec.width * widen_factor)
        if width // beta_inv < 1:
            raise ValueError(f"widen_factor={widen_factor} leaves the Fast pathway no channels "
                             f"(Slow stem width {width}, beta_inv {beta_inv})")
        self.spec = spec
        self.alpha = alpha
        self.arch_kwargs = {"alpha": alpha, "beta_inv": beta_inv, "fusion_kernel": fusion_kernel}
        self.checkpoint_stages = checkpoint_stages
        slow_ch, fast_ch = width, width // beta_inv
        self.s1 = SlowFastStem((slow_ch, fast_ch),
                               (spec.slow_kernels_t[0], spec.fast_kernels_t[0]), make_norm)
        self.s1_fuse = FastToSlow(fast_ch, fusion_kernel, alpha, make_norm)
        slow_ch += fast_ch * FUSION_CHANNEL_RATIO
        for i, depth in enumerate(spec.depths):
            inner, out_ch = width * 2 ** i, 4 * width * 2 ** i
            plans = (PathwayPlan(slow_ch, inner, out_ch, spec.slow_kernels_t[i + 1]),
                     PathwayPlan(fast_ch, inner // beta_inv, out_ch // beta_inv,
                                 spec.fast_kernels_t[i + 1]))
            self.add_module(f"s{i + 2}", SlowFastStage(depth, plans, spec.spatial_strides[i],
                                                       make_norm))
            slow_ch, fast_ch = out_ch, out_ch // beta_inv
            if i < 3:  # no lateral after res5
                self.add_module(f"s{i + 2}_fuse",
                                FastToSlow(fast_ch, fusion_kernel, alpha, make_norm))
                slow_ch += fast_ch * FUSION_CHANNEL_RATIO
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.num_features = slow_ch + fast_ch
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.num_features, num_classes)
        init_weights(self)
        if zero_init_last_norm:
            zero_init_last_norms(self)

    # freeze_backbone's view (stem, layer1..4): each part with the lateral that leaves it
    @property
    def stem(self) -> nn.Module:
        return nn.ModuleList([self.s1, self.s1_fuse])

    layer1 = property(lambda self: nn.ModuleList([self.s2, self.s2_fuse]))
    layer2 = property(lambda self: nn.ModuleList([self.s3, self.s3_fuse]))
    layer3 = property(lambda self: nn.ModuleList([self.s4, self.s4_fuse]))
    layer4 = property(lambda self: self.s5)

    def pathways(self, x: Tensor) -> Pair:
        """(slow, fast) inputs from one clip (N, 3, T, H, W)."""
        num_frames = x.shape[2]
        if num_frames % self.alpha:
            raise ValueError(f"SlowFast takes clips of a multiple of alpha={self.alpha} frames, "
                             f"got {num_frames}")
        return x.index_select(2, slow_frame_indices(num_frames, self.alpha, x.device)), x

    def forward_pathways(self, x: Tensor) -> Pair:
        """The res5 feature maps of both pathways, (N, C, T, H, W) each."""
        slow, fast = self.s1(*self.pathways(x))
        slow, fast = self.s1_fuse(slow, fast)
        for stage, fuse in ((self.s2, self.s2_fuse), (self.s3, self.s3_fuse),
                            (self.s4, self.s4_fuse), (self.s5, None)):
            slow, fast = stage(slow, fast, self.checkpoint_stages)
            if fuse is not None:
                slow, fast = fuse(slow, fast)
        return slow, fast

    def forward_features(self, x: Tensor) -> Tensor:
        """Both pathways globally pooled and concatenated (Slow first), (N, num_features)."""
        slow, fast = self.forward_pathways(x)
        return torch.cat([self.avgpool(slow).flatten(1), self.avgpool(fast).flatten(1)], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.dropout(self.forward_features(x)))

    def train(self, mode: bool = True) -> "SlowFast":
        super().train(mode)
        keep_frozen_norms_in_eval(self)  # fine-tuning: see freeze.py
        return self


def slowfast(arch: str, num_classes: int, make_norm: NormFactory, dropout: float = 0.5,
             alpha: int = 4, beta_inv: int = 8, fusion_kernel: int = 7, widen_factor: float = 1.0,
             zero_init_last_norm: bool = False, checkpoint_stages: bool = False) -> SlowFast:
    """SlowFast R50 / R101; the defaults are PySlowFast's 8x8 (alpha 4, beta_inv 8,
    fusion_kernel 7), 4x16 is alpha=8, fusion_kernel=5. widen_factor scales every width (small
    models for CPU runs)."""
    return SlowFast(SLOWFAST_SPECS[arch], num_classes, make_norm, dropout, alpha, beta_inv,
                    fusion_kernel, widen_factor, zero_init_last_norm, checkpoint_stages)
