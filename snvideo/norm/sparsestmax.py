"""sparsemax and sparsestmax: the importance functions of Sparse Switchable Normalization.

SSN (Shao et al., CVPR 2019, "SSN: Learning Sparse Switchable Normalization via SparsestMax")
replaces SN's softmax over the K importance logits z by

    sparsestmax(z; r) = argmin ||p - z||^2  over p in the simplex with ||p - u|| >= r,

u = (1/K, ..., 1/K) the simplex centre. At r = 0 it is sparsemax (Martins & Astudillo, 2016:
the Euclidean projection of z onto the simplex, already sparse for spread-out logits); as r
grows, the ball around u that p must stay out of grows, and from r = sqrt((K - 1) / K) (the
distance from u to a vertex; 0.816 for K = 3) every output is one-hot. Training raises r from
0 to 1 linearly over all iterations (the official code's schedule, `sparsity_radius`), so a
trained SSN layer has chosen exactly one normalizer for its means and one for its variances.

Computed as the paper's algorithm does: project onto the simplex (sparsemax); while the point
lies inside the ball, push it radially out to the sphere from the centre of the face it lies on
(inside that face the sphere has radius sqrt(r^2 - ||face centre - u||^2)) and project back
onto the simplex, which can only shrink the support. At most K - 1 rounds; written with masks
instead of branches, so it runs on the device without a host sync and autograd differentiates
it. (The official code pushes its first round against r from the face centre of the sparsemax
point rather than against the whole simplex's centre; the two agree whenever that point has no
zero, e.g. from SSN's start at equal logits.) A point exactly at a face centre has no radial
direction: it is pushed towards the vertex of its largest logit (the first on ties).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def sparsemax(z: Tensor) -> Tensor:
    """Euclidean projection of each row (last dim) of z onto the probability simplex."""
    k = z.shape[-1]
    z_sorted = z.sort(dim=-1, descending=True).values
    cumsum = z_sorted.cumsum(-1)
    ranks = torch.arange(1, k + 1, device=z.device, dtype=z.dtype)
    in_support = 1 + ranks * z_sorted > cumsum
    support = in_support.sum(-1, keepdim=True)
    tau = (cumsum.gather(-1, support - 1) - 1) / support.to(z.dtype)
    return torch.clamp(z - tau, min=0)


def sparsestmax(z: Tensor, radius: float | Tensor) -> Tensor:
    """sparsestmax of each row (last dim) of z at `radius` (see the module docstring); a
    0-dim tensor radius keeps torch.compile from specializing on its value."""
    k = z.shape[-1]
    p = sparsemax(z)
    if k == 1 or (not isinstance(radius, Tensor) and radius <= 0):
        return p
    centre = 1.0 / k
    # the vertex each row moves to when it sits exactly at a face centre
    first_top = torch.nn.functional.one_hot(z.argmax(-1), k).to(z.dtype)
    tiny = (8 * torch.finfo(z.dtype).eps) ** 2  # closer to a face centre than rounding: at it
    for _ in range(k - 1):
        support = (p > 0).to(z.dtype)
        size = support.sum(-1, keepdim=True)
        face_centre = support / size
        face_radius_sq = radius * radius - ((face_centre - centre) ** 2).sum(-1, keepdim=True)
        offset = p - face_centre
        # within the face's plane only (rounding leaves a component along its normal)
        offset = offset - support * (offset.sum(-1, keepdim=True) / size)
        dist_sq = (offset * offset).sum(-1, keepdim=True)
        at_centre = dist_sq <= tiny
        offset = torch.where(at_centre, first_top - face_centre, offset)
        # (clamped below: torch.where's unused side must not make NaN gradients)
        dist = torch.sqrt((offset * offset).sum(-1, keepdim=True).clamp(min=1e-24))
        inside = (size > 1) & (dist_sq < face_radius_sq)
        pushed = face_centre + torch.sqrt(face_radius_sq.clamp(min=1e-24)) * offset / dist
        p = torch.where(inside, sparsemax(pushed), p)
    return p


def one_hot_radius(k: int) -> float:
    """The radius from which every sparsestmax output over k values is one-hot."""
    return math.sqrt((k - 1) / k)
