"""Nyström self-attention for NCHW feature maps of any spatial size (thesis 3.4.3, Fig. 3.5; [109]).

Full softmax attention over the ``N = H*W`` tokens, ``S V`` with ``S = softmax(Q K^T / sqrt(d))``,
costs O(N^2). Nyströmformer [109] approximates ``S`` through ``m`` landmarks ``Q~, K~``:

    S V  ~=  softmax(Q K~^T / sqrt d) @ pinv(softmax(Q~ K~^T / sqrt d)) @ (softmax(Q~ K^T / sqrt d) @ V)

Landmarks here are averages of queries/keys over a fixed grid of spatial cells (adaptive average
pooling to ``landmarks = (gh, gw)``, clamped to ``(min(gh, H), min(gw, W))``), so any ``H x W`` works:
no divisibility requirement (the authors' public code needs ``H*W % 4 == 0``) and the NCHW tensor is
permuted to ``(B, heads, N, d)`` before any token-wise product (that code reshapes without a permute,
which mixes channels and positions).

When the grid covers every pixel (``gh >= H`` and ``gw >= W``) the landmarks are the tokens themselves
and the formula is exact (``S pinv(S) S = S``); the module then computes full attention directly
(`direct_when_exact`), which is the same value without the pseudo-inverse's round-off.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def iterative_pinv(a: torch.Tensor, iterations: int = 6) -> torch.Tensor:
    """Moore-Penrose pseudo-inverse by the iteration used in Nyströmformer [109] (Razavi et al.):

    ``Z0 = A^T / (||A||_1 ||A||_inf)``, ``Z <- Z/4 (13 I - A Z (15 I - A Z (7 I - A Z)))``.
    Batched over leading dimensions; differentiable; converges for the softmax matrices used here.
    """
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    abs_a = a.abs()
    col = abs_a.sum(dim=-2).amax(dim=-1)  # ||A||_1
    row = abs_a.sum(dim=-1).amax(dim=-1)  # ||A||_inf
    z = a.transpose(-1, -2) / (col * row)[..., None, None]
    for _ in range(iterations):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


def softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Full scaled dot-product attention ``softmax(q k^T / sqrt d) v`` on ``(..., N, d)`` tensors."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    return torch.softmax((q @ k.transpose(-1, -2)) * scale, dim=-1) @ v


def nystrom_attention(q, k, v, q_landmarks, k_landmarks, pinv: str = "iterative", iterations: int = 6):
    """Nyström approximation of `softmax_attention` [109]; tensors ``(..., N, d)`` / ``(..., m, d)``."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    kernel_1 = torch.softmax((q @ k_landmarks.transpose(-1, -2)) * scale, dim=-1)  # (N, m)
    kernel_2 = torch.softmax((q_landmarks @ k_landmarks.transpose(-1, -2)) * scale, dim=-1)  # (m, m)
    kernel_3 = torch.softmax((q_landmarks @ k.transpose(-1, -2)) * scale, dim=-1)  # (m, N)
    if pinv == "exact":
        kernel_2_inv = torch.linalg.pinv(kernel_2)
    elif pinv == "iterative":
        kernel_2_inv = iterative_pinv(kernel_2, iterations)
    else:
        raise ValueError(f"pinv must be 'iterative' or 'exact', got {pinv!r}")
    return kernel_1 @ (kernel_2_inv @ (kernel_3 @ v))


def to_tokens(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``(B, heads*d, H, W) -> (B, heads, H*W, d)``: split channels into heads, then permute the
    channel axis behind the token axis (token ``n = h*W + w``)."""
    b, c, h, w = x.shape
    return x.reshape(b, heads, c // heads, h * w).transpose(-1, -2)


def from_tokens(t: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of `to_tokens`: ``(B, heads, H*W, d) -> (B, heads*d, H, W)``."""
    b, heads, n, d = t.shape
    return t.transpose(-1, -2).reshape(b, heads * d, height, width)


class NystromAttention(nn.Module):
    """Multi-head (default single-head, thesis 5.1) Nyström self-attention on an NCHW map.

    ``x -> 1x1 conv -> (q, k, v)`` with ``embed_dim`` channels split into ``heads``; landmarks are
    grid-cell means (`nystrom_attention` docstring); output ``1x1 conv embed_dim -> channels``.
    Works for any ``H, W >= 1``.
    """

    def __init__(self, channels: int, embed_dim: int, heads: int = 1, landmarks: tuple[int, int] = (4, 4),
                 pinv: str = "iterative", pinv_iterations: int = 6, direct_when_exact: bool = True):
        super().__init__()
        if embed_dim % heads:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by heads {heads}")
        if min(landmarks) < 1:
            raise ValueError(f"landmarks grid must be >= 1x1, got {landmarks}")
        if pinv not in ("iterative", "exact"):
            raise ValueError(f"pinv must be 'iterative' or 'exact', got {pinv!r}")
        self.heads = heads
        self.embed_dim = embed_dim
        self.landmarks = tuple(landmarks)
        self.pinv = pinv
        self.pinv_iterations = pinv_iterations
        self.direct_when_exact = direct_when_exact
        self.qkv = nn.Conv2d(channels, 3 * embed_dim, kernel_size=1)
        self.out = nn.Conv2d(embed_dim, channels, kernel_size=1)

    def landmark_grid(self, height: int, width: int) -> tuple[int, int]:
        return min(self.landmarks[0], height), min(self.landmarks[1], width)

    def _landmarks(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return to_tokens(F.adaptive_avg_pool2d(x, grid), self.heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, height, width = x.shape
        q_map, k_map, v_map = self.qkv(x).chunk(3, dim=1)
        q, k, v = (to_tokens(t, self.heads) for t in (q_map, k_map, v_map))
        grid = self.landmark_grid(height, width)
        if self.direct_when_exact and grid == (height, width):
            out = softmax_attention(q, k, v)
        else:
            out = nystrom_attention(q, k, v, self._landmarks(q_map, grid), self._landmarks(k_map, grid),
                                    self.pinv, self.pinv_iterations)
        return self.out(from_tokens(out, height, width))
