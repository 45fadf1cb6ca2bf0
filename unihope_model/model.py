"""The UniHOPE network: HFL-Net backbone + object switcher + grasp-aware fusion + hand/object decoders.

Tensors in, a typed `UniHOPEOutput` out. The MANO hand layer is injected (any module with
`forward(global_orient, hand_pose, betas, transl)` returning `.vertices` (B, 778, 3) and `.joints`
(B, 21, 3)); its buffers are not part of `trainable_state_dict`, so checkpoints carry no MANO data.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from unihope.model.backbone import RESNET_BLOCKS, HFLBackbone
from unihope.model.fpn import FPN
from unihope.model.fusion import FUSION_MODES, GraspAwareFusion, HandToObjectAttention
from unihope.model.heads import NUM_MANO_POSE, HandDecoder, ObjectDecoder, heatmap_argmax_box
from unihope.model.roi_align import MIN_BOX_SIDE_PX, box_to_roi_px, roi_align, roi_boxes
from unihope.model.switcher import ObjectSwitcher

FPN_STRIDE_PX = 4  # P2 sits at 1/4 of the input resolution
HAND_LAYER_PREFIX = "hand_layer."
MAPPER_PREFIX = "enhancement_mapper."


@dataclass(frozen=True)
class ModelSpec:
    """Architecture hyper-parameters (defaults = UniHOPE / HFL-Net upstream sizes)."""

    depth: int = 50
    width_multiplier: float = 1.0
    norm: str = "batch"  # "batch" (ImageNet weights) | "group" (tiny CPU batches)
    fpn_channels: int = 256
    roi_size: int = 32
    roi_sampling_ratio: int = 2
    num_heads: int = 8
    transformer_depth: int = 1
    mano_hidden: tuple[int, ...] = (1024, 512)
    num_hand_res_blocks: int = 4
    switcher_channels: int = 64
    switcher_hidden: int = 1024
    use_switcher: bool = True
    fusion: str = "soft"  # see fusion.FUSION_MODES; "ungated" = HFL-Net (the "no fusion" ablation)
    # UniHOPE / HFL-Net code: object features entering the hand path and hand features entering the
    # object path are detached, so each stream's losses train only its own stages 2-3 (without it the
    # 5e2-weighted object loss dominates the hand layers' gradient).
    detach_cross_stream: bool = True

    def __post_init__(self) -> None:
        if self.depth not in RESNET_BLOCKS:
            raise ValueError(f"depth must be one of {sorted(RESNET_BLOCKS)}, got {self.depth}")
        if self.fusion not in FUSION_MODES:
            raise ValueError(f"fusion must be one of {FUSION_MODES}, got {self.fusion!r}")
        if not self.use_switcher and self.fusion != "ungated":
            raise ValueError(f"fusion={self.fusion!r} needs the switcher; without it use fusion='ungated'")
        if self.fpn_channels % self.num_heads or (2 * self.fpn_channels) % self.num_heads:
            raise ValueError(f"num_heads={self.num_heads} must divide fpn_channels={self.fpn_channels}")


@dataclass(frozen=True)
class UniHOPEOutput:
    """Everything one forward pass predicts (B = batch, R = RoI size)."""

    grasp_logits: torch.Tensor | None  # (B, 2); None without a switcher
    grasp_prob: torch.Tensor  # (B,) s in [0, 1] (1 when there is no switcher)
    fusion_gate: torch.Tensor  # (B,) the s the fusion actually used
    mano_mean: torch.Tensor  # (B, 58) pose (48 axis-angle) + betas (10)
    mano_logvar: torch.Tensor  # (B, 58) log-variances of the same
    mano_pose: torch.Tensor  # (B, 48) axis-angle, right hand, flat_hand_mean convention
    mano_betas: torch.Tensor  # (B, 10)
    verts_rel_m: torch.Tensor  # (B, 778, 3) metres, relative to the wrist joint
    joints_rel_m: torch.Tensor  # (B, 21, 3) metres, relative to the wrist joint (DexYCB order)
    hand_boxes_xyxy_px: torch.Tensor  # (B, 4) the hand RoI pooled and decoded with (`roi_align.roi_boxes`)
    object_boxes_xyxy_px: torch.Tensor  # (B, 4) the object RoI pooled and decoded with
    heatmaps: torch.Tensor  # (B, 21, R, R) over the hand box
    joints_2d_px: torch.Tensor  # (B, 21, 2) input px, soft-argmax of the heatmaps
    object_keypoints_box: torch.Tensor  # (B, 21, 2) box-normalised
    object_keypoints_2d_px: torch.Tensor  # (B, 21, 2) input px
    object_votes_box: torch.Tensor  # (B, 21, R, R, 2) per-cell votes, box-normalised
    object_conf_logits: torch.Tensor  # (B, 21, R, R)
    layer2_hand: torch.Tensor  # (B, C2, H/8, W/8) hand-stream stage-2 output, post-ReLU (image-level enhancement)
    hand_tokens: torch.Tensor  # (B, R*R, C) fused RoI hand tokens (the paper form's token level)
    hand_roi_features: torch.Tensor  # (B, C, R, R) RoI-aligned hand features before fusion (upstream token level)
    hand_encoding: torch.Tensor  # (B, H) the hand decoder's encoding the MANO head reads (upstream output level)


def select_rows(out: UniHOPEOutput, index: torch.Tensor) -> UniHOPEOutput:
    """The outputs of the batch rows `index` (a joint forward of occluded and de-occluded images, split)."""
    return UniHOPEOutput(**{
        f.name: (None if getattr(out, f.name) is None else getattr(out, f.name)[index])
        for f in dataclasses.fields(UniHOPEOutput)
    })


def overlap_boxes(hand_boxes: torch.Tensor, object_boxes: torch.Tensor) -> torch.Tensor:
    """Intersection of the hand and object boxes; the object box where they do not overlap."""
    inter = torch.cat([torch.maximum(hand_boxes[:, :2], object_boxes[:, :2]),
                       torch.minimum(hand_boxes[:, 2:], object_boxes[:, 2:])], dim=1)
    empty = ((inter[:, 2:] - inter[:, :2]) < MIN_BOX_SIDE_PX).any(dim=1, keepdim=True)
    return torch.where(empty, object_boxes, inter)


class UniHOPEModel(nn.Module):
    """UniHOPE on HFL-Net: predicts root-relative hand mesh/joints, grasp state and object keypoints.

    Args:
        spec: architecture hyper-parameters.
        hand_layer: MANO layer for right hands (left hands are mirrored by the caller).
    """

    def __init__(self, spec: ModelSpec, hand_layer: nn.Module) -> None:
        super().__init__()
        self.spec = spec
        self.backbone = HFLBackbone(spec.depth, spec.width_multiplier, spec.norm)
        c1, c2, c3, c4 = self.backbone.stage_channels
        self.hand_fpn = FPN((c1, c2, c3, c4), spec.fpn_channels)
        self.obj_fpn = FPN((c1, c2, c3, c4), spec.fpn_channels)
        self.switcher = (
            ObjectSwitcher(spec.fpn_channels, spec.roi_size, spec.switcher_channels, spec.switcher_hidden)
            if spec.use_switcher
            else None
        )
        self.fusion = GraspAwareFusion(spec.fpn_channels, spec.roi_size, spec.num_heads, spec.transformer_depth, spec.fusion)
        self.hand_to_object = HandToObjectAttention(spec.fpn_channels, spec.roi_size, spec.num_heads)
        self.hand_decoder = HandDecoder(spec.fpn_channels, spec.roi_size, spec.mano_hidden, spec.num_hand_res_blocks, spec.norm)
        self.object_decoder = ObjectDecoder(spec.fpn_channels, spec.roi_size, spec.norm)
        self.hand_layer = hand_layer
        # UniHOPE's output-level enhancement maps the student's hand encoding through a learnable layer
        # that only that loss uses (starts as the identity, so the first loss is the plain difference)
        width = self.hand_decoder.encoding_width
        self.enhancement_mapper = nn.Linear(width, width)
        with torch.no_grad():
            self.enhancement_mapper.weight.copy_(torch.eye(width))
            self.enhancement_mapper.bias.zero_()

    def _roi(self, features: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        return roi_align(features, boxes, self.spec.roi_size, FPN_STRIDE_PX, self.spec.roi_sampling_ratio)

    def mano_forward(self, mano_pose: torch.Tensor, mano_betas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Wrist-relative (verts (B, 778, 3), joints (B, 21, 3)) in metres from MANO parameters."""
        zeros = mano_pose.new_zeros(mano_pose.shape[0], 3)
        out = self.hand_layer(global_orient=mano_pose[:, :3], hand_pose=mano_pose[:, 3:], betas=mano_betas, transl=zeros)
        root = out.joints[:, :1]
        return out.vertices - root, out.joints - root

    def forward(self, images: torch.Tensor, hand_boxes_xyxy_px: torch.Tensor, object_boxes_xyxy_px: torch.Tensor) -> UniHOPEOutput:
        """Predict hand, grasp state and object keypoints for a batch of crops.

        Args:
            images: (B, 3, S, S) float in [0, 1].
            hand_boxes_xyxy_px: (B, 4) hand boxes in crop px (UniHOPE: the joints' box x1.1,
                `roi_align.points_box_xyxy`); not clipped to the crop.
            object_boxes_xyxy_px: (B, 4) object boxes in crop px (the keypoints' box x1.0).

        Returns:
            UniHOPEOutput.

        Raises:
            ValueError: on shapes that do not match.
        """
        # 1. Check inputs
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3]:
            raise ValueError(f"images must be (B, 3, S, S), got {tuple(images.shape)}")
        batch = images.shape[0]
        for name, boxes in (("hand_boxes", hand_boxes_xyxy_px), ("object_boxes", object_boxes_xyxy_px)):
            if boxes.shape != (batch, 4):
                raise ValueError(f"{name} must be ({batch}, 4), got {tuple(boxes.shape)}")
        # One box convention for pooling, decoding and the losses (which read these boxes from the output)
        hand_boxes = roi_boxes(hand_boxes_xyxy_px.to(images.dtype))
        object_boxes = roi_boxes(object_boxes_xyxy_px.to(images.dtype))

        # 2. Backbone and the two pyramids
        feats = self.backbone(images)
        p_hand = self.hand_fpn((feats.c1,) + feats.hand)
        p_obj = self.obj_fpn((feats.c1,) + feats.obj)

        # 3. RoI features: F_h, F_oh on the hand box, F_o on the object box, F_ho on the overlap
        f_h = self._roi(p_hand, hand_boxes)
        f_oh = self._roi(p_obj, hand_boxes)
        f_o = self._roi(p_obj, object_boxes)
        f_ho = self._roi(p_hand, overlap_boxes(hand_boxes, object_boxes))

        # 4. Object switcher
        if self.switcher is not None:
            grasp_logits = self.switcher(f_o)
            grasp_prob = torch.softmax(grasp_logits, dim=-1)[:, 1]
        else:
            grasp_logits, grasp_prob = None, images.new_ones(batch)

        # 5. Grasp-aware object-to-hand fusion and hand-to-object attention
        if self.spec.detach_cross_stream:  # the switcher's gate is object-stream output too
            f_oh_in, f_ho_in, gate_in = f_oh.detach(), f_ho.detach(), grasp_prob.detach()
        else:
            f_oh_in, f_ho_in, gate_in = f_oh, f_ho, grasp_prob
        f_he, gate = self.fusion(f_h, f_oh_in, gate_in if self.switcher is not None else None)
        f_oe = self.hand_to_object(f_o, f_ho_in)

        # 6. Hand decoder -> MANO -> wrist-relative mesh and joints
        heatmaps, mano_mean, mano_logvar, hand_encoding = self.hand_decoder(f_he)
        mano_pose, mano_betas = mano_mean[:, :NUM_MANO_POSE], mano_mean[:, NUM_MANO_POSE:]
        verts_rel, joints_rel = self.mano_forward(mano_pose, mano_betas)

        # 7. Object decoder -> keypoints in crop px
        kp_box, votes, conf_logits = self.object_decoder(f_oe)
        return UniHOPEOutput(
            grasp_logits=grasp_logits,
            grasp_prob=grasp_prob,
            fusion_gate=gate,
            mano_mean=mano_mean,
            mano_logvar=mano_logvar,
            mano_pose=mano_pose,
            mano_betas=mano_betas,
            verts_rel_m=verts_rel,
            joints_rel_m=joints_rel,
            hand_boxes_xyxy_px=hand_boxes,
            object_boxes_xyxy_px=object_boxes,
            heatmaps=heatmaps,
            joints_2d_px=box_to_roi_px(hand_boxes, heatmap_argmax_box(heatmaps)),
            object_keypoints_box=kp_box,
            object_keypoints_2d_px=box_to_roi_px(object_boxes, kp_box),
            object_votes_box=votes,
            object_conf_logits=conf_logits,
            layer2_hand=feats.hand[0],
            hand_tokens=f_he.flatten(2).transpose(1, 2),
            hand_roi_features=f_h,
            hand_encoding=hand_encoding,
        )

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """State dict without the injected hand layer (MANO data stays out of checkpoints)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(HAND_LAYER_PREFIX)}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load a `trainable_state_dict`; every non-hand-layer tensor must be present and no other.

        Raises:
            ValueError: on missing or unexpected keys (a checkpoint from another architecture).
        """
        result = self.load_state_dict(state, strict=False)
        # the enhancement mapper only serves a training loss: checkpoints written before it existed still load
        missing = [k for k in result.missing_keys if not k.startswith((HAND_LAYER_PREFIX, MAPPER_PREFIX))]
        if missing or result.unexpected_keys:
            raise ValueError(
                f"checkpoint does not match this model: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}"
                " (was it trained with another model config?)"
            )
