"""Hand-object feature interaction: grasp-aware object-to-hand fusion and hand-to-object cross-attention."""

from __future__ import annotations

import torch
from torch import nn

FUSION_MODES = ("soft", "hard", "ungated")
FFN_EXPANSION = 2  # feed-forward width / token width


def _tokens(feature_map: torch.Tensor) -> torch.Tensor:
    return feature_map.flatten(2).transpose(1, 2)  # (B, C, R, R) -> (B, R*R, C)


def _feature_map(tokens: torch.Tensor, size: int) -> torch.Tensor:
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], size, size)


class GraspAwareFusion(nn.Module):
    """F^H = cat(F_h, s * F_oh + (1 - s) * F_h), fused by self-attention; the first half is the hand feature.

    `soft` uses the switcher's confidence s (UniHOPE paper), `hard` its argmax (UniHOPE code),
    `ungated` fixes s = 1 (HFL-Net's object-to-hand enhancement, the "no fusion" ablation). With
    s = 0 the object features drop out entirely and the module sees only the hand path.

    Args:
        channels: C of the RoI features.
        roi_size: R of the RoI grid (for the learned position embedding).
        num_heads: attention heads (must divide 2C).
        depth: transformer layers.
        mode: one of FUSION_MODES.
    """

    def __init__(self, channels: int, roi_size: int, num_heads: int, depth: int = 1, mode: str = "soft") -> None:
        super().__init__()
        if mode not in FUSION_MODES:
            raise ValueError(f"fusion mode must be one of {FUSION_MODES}, got {mode!r}")
        if (2 * channels) % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide the fused width 2*{channels}")
        self.mode = mode
        self.channels = channels
        self.roi_size = roi_size
        self.position = nn.Parameter(torch.zeros(1, roi_size * roi_size, 2 * channels))
        nn.init.normal_(self.position, std=0.02)
        layer = nn.TransformerEncoderLayer(
            d_model=2 * channels,
            nhead=num_heads,
            dim_feedforward=FFN_EXPANSION * 2 * channels,
            dropout=0.0,
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=depth, enable_nested_tensor=False)

    def gate(self, grasp_prob: torch.Tensor | None, batch: int, like: torch.Tensor) -> torch.Tensor:
        """The weight s (B,) given to the object features in this mode."""
        if self.mode == "ungated" or grasp_prob is None:
            if self.mode != "ungated":
                raise ValueError(f"fusion mode {self.mode!r} needs the switcher's grasp probability")
            return like.new_ones(batch)
        if self.mode == "hard":
            return (grasp_prob > 0.5).to(like.dtype)
        return grasp_prob

    def forward(
        self, hand_features: torch.Tensor, object_on_hand_features: torch.Tensor, grasp_prob: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fuse the object stream's features (on the hand box) into the hand features.

        Args:
            hand_features: F_h (B, C, R, R), hand stream on the hand box.
            object_on_hand_features: F_oh (B, C, R, R), object stream on the hand box.
            grasp_prob: s (B,) in [0, 1]; None only in `ungated` mode.

        Returns:
            (F_he (B, C, R, R) enhanced hand features, the gate s (B,) actually used).
        """
        batch = hand_features.shape[0]
        s = self.gate(grasp_prob, batch, hand_features)[:, None, None, None]
        mixed = s * object_on_hand_features + (1.0 - s) * hand_features
        tokens = _tokens(torch.cat([hand_features, mixed], dim=1)) + self.position
        fused = self.encoder(tokens)[:, :, : self.channels]
        return _feature_map(fused, self.roi_size), s.flatten()


class HandToObjectAttention(nn.Module):
    """Cross-attention: object tokens (query) attend to hand-stream tokens on the hand-object overlap (HFL-Net)."""

    def __init__(self, channels: int, roi_size: int, num_heads: int) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide channels={channels}")
        self.roi_size = roi_size
        self.position = nn.Parameter(torch.zeros(1, roi_size * roi_size, channels))
        nn.init.normal_(self.position, std=0.02)
        self.norm_query = nn.LayerNorm(channels)
        self.norm_memory = nn.LayerNorm(channels)
        self.attention = nn.MultiheadAttention(channels, num_heads, dropout=0.0, batch_first=True)
        self.norm_ffn = nn.LayerNorm(channels)
        self.ffn = nn.Sequential(
            nn.Linear(channels, FFN_EXPANSION * channels), nn.GELU(), nn.Linear(FFN_EXPANSION * channels, channels)
        )

    def forward(self, object_features: torch.Tensor, hand_on_overlap_features: torch.Tensor) -> torch.Tensor:
        """Args: F_o (B, C, R, R), F_ho (B, C, R, R). Returns: F_oe (B, C, R, R)."""
        query = _tokens(object_features) + self.position
        memory = self.norm_memory(_tokens(hand_on_overlap_features) + self.position)
        attended, _ = self.attention(self.norm_query(query), memory, memory, need_weights=False)
        tokens = query + attended
        tokens = tokens + self.ffn(self.norm_ffn(tokens))
        return _feature_map(tokens, self.roi_size)
