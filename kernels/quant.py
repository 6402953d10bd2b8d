"""Quantization math: symmetric int8 with per-tensor, per-channel, per-block or per-group scales.

Pure functions over tensors. Scales are float32 and never zero (an all-zero block gets scale 1, which
quantizes it to zeros exactly).
"""

from __future__ import annotations

import torch

INT8_MAX = 127


def quantize_int8_rows(x: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize [..., L, D] to int8 with one scale per block of `block` rows (tokens).

    Returns (int8 [..., L, D], scale per row [..., L, 1]) so the caller can broadcast the scale per token.
    `block` >= L gives one scale per tensor slice; `block` == 1 one scale per token.
    """
    *lead, n, d = x.shape
    pad = (-n) % block
    xp = torch.nn.functional.pad(x, (0, 0, 0, pad)) if pad else x
    blocks = xp.reshape(*lead, (n + pad) // block, block * d)
    amax = blocks.abs().amax(dim=-1, keepdim=True)
    scale = torch.where(amax > 0, amax / INT8_MAX, torch.ones_like(amax))
    q = torch.round(blocks / scale).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
    q = q.reshape(*lead, n + pad, d)[..., :n, :]
    per_row = scale.repeat_interleave(block, dim=-2)[..., :n, :]
    return q, per_row


def quantize_int8_channels(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize [..., L, D] with one scale per channel (last dim), shape [..., 1, D]."""
    amax = x.abs().amax(dim=-2, keepdim=True)
    scale = torch.where(amax > 0, amax / INT8_MAX, torch.ones_like(amax))
    return torch.round(x / scale).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8), scale


def granularity_rows(quant: str, block: int, n: int) -> int:
    """Rows per scale for a row-wise granularity name."""
    if quant == "per_tensor":
        return n
    if quant in ("per_block", "per_group"):
        return block
    raise ValueError(f"{quant} is not a row-wise granularity")


INT4_MAX = 7


def quantize_int8_groups(x: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 with one scale per `group_size` consecutive values of the last dim.

    Returns (int8 shaped like x, float16 scales [..., D // group_size]). The last dim must divide by
    `group_size`. fp16 scales keep the overhead at 2 bytes per group.
    """
    q, s = _quantize_groups(x, group_size, INT8_MAX)
    return q, s


def dequantize_int8_groups(q: torch.Tensor, scale: torch.Tensor, group_size: int) -> torch.Tensor:
    """Float32 values of `quantize_int8_groups` output."""
    *lead, d = q.shape
    g = q.reshape(*lead, d // group_size, group_size).to(torch.float32)
    return (g * scale.to(torch.float32).unsqueeze(-1)).reshape(*lead, d)


def _quantize_groups(x: torch.Tensor, group_size: int, qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    *lead, d = x.shape
    if d % group_size:
        raise ValueError(f"last dim {d} is not a multiple of group_size {group_size}")
    g = x.reshape(*lead, d // group_size, group_size)
    amax = g.abs().amax(dim=-1, keepdim=True)
    scale = torch.where(amax > 0, amax / qmax, torch.ones_like(amax)).to(torch.float16).to(torch.float32)
    q = torch.round(g / scale).clamp_(-qmax, qmax).to(torch.int8)
    return q.reshape(*lead, d), scale.squeeze(-1).to(torch.float16)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Pack int8 values in [-8, 7] two per byte along the last dim (even index in the low nibble).

    The last dim must be even. Returns uint8 with half as many values in the last dim.
    """
    if q.shape[-1] % 2:
        raise ValueError(f"last dim {q.shape[-1]} must be even to pack two int4 values per byte")
    u = (q.to(torch.int16) & 0xF).to(torch.uint8)
    return u[..., 0::2] | (u[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of `pack_int4`: uint8 [..., D/2] -> int8 [..., D] (sign-extended nibbles)."""
    lo = (packed & 0xF).to(torch.int8)
    hi = (packed >> 4).to(torch.int8)
    both = torch.stack((lo, hi), dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)
    return torch.where(both > 7, both - 16, both)


def quantize_int4_groups(x: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int4 in [-7, 7] per group of the last dim, packed two per byte.

    Returns (uint8 packed [..., D/2], float16 scales [..., D // group_size]).
    """
    q, s = _quantize_groups(x, group_size, INT4_MAX)
    return pack_int4(q), s


def dequantize_int4_groups(packed: torch.Tensor, scale: torch.Tensor, group_size: int) -> torch.Tensor:
    """Float32 values of `quantize_int4_groups` output."""
    return dequantize_int8_groups(unpack_int4(packed), scale, group_size)
