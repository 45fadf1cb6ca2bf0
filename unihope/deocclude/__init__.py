"""De-occlusion of the hand in annotated crops: backend registry and `build_deoccluder`.

    deoccluder = build_deoccluder(cfg.deocclusion)
    results = deoccluder.run(annotated_frames)  # list[DeocclusionResult]

Backends: `render` (weight-free default: re-shaded rendered hand + background inpainting), `inpaint`
(OpenCV inpainting baseline), `controlnet` (SD-1.5 inpainting + depth ControlNet, HandRefiner-style, with
UniHOPE's adaptive beta). A new backend is one module plus one line in DEOCCLUDERS.
"""

from __future__ import annotations

from collections.abc import Callable

from unihope.config import DeocclusionConfig

from .base import REASONS, Deoccluder
from .inpaint_backend import InpaintDeoccluder
from .render_backend import RenderDeoccluder
from .scoring import ColourFlexionScorer, KeypointFlexionScorer, Scorer


def _controlnet(cfg: DeocclusionConfig, scorer: Scorer | None) -> Deoccluder:
    # Imported on use: torch + diffusers take seconds to import and the other backends need neither.
    from .controlnet_backend import ControlNetDeoccluder

    return ControlNetDeoccluder(cfg, scorer)


DEOCCLUDERS: dict[str, Callable[[DeocclusionConfig, Scorer | None], Deoccluder]] = {
    "render": RenderDeoccluder,
    "inpaint": InpaintDeoccluder,
    "controlnet": _controlnet,
}


# Backends that hold a GPU while they run. Only their tasks carry `flow.gpu_tag`: the tag's
# concurrency limit exists to share a GPU, and a tagged task pays for a lease request to the API
# (seconds per task on a SQLite server, docs/performance/pipeline.md), which the CPU-only backends
# (render, inpaint) have no reason to pay.
GPU_BACKENDS = frozenset({"controlnet"})


def uses_gpu(cfg: DeocclusionConfig) -> bool:
    """Whether the configured de-occluder may run on a GPU (a GPU backend not pinned to the CPU)."""
    return cfg.backend in GPU_BACKENDS and cfg.controlnet.device != "cpu"


def build_deoccluder(cfg: DeocclusionConfig, scorer: Scorer | None = None) -> Deoccluder:
    """The de-occluder named by `cfg.backend`, ready to `run`.

    Args:
        cfg: the de-occlusion config.
        scorer: candidate scorer; None -> the weight-free `ColourFlexionScorer` from cfg. Pass a
            `KeypointFlexionScorer(predict_joints)` to score flexion with a trained 21-joint model.

    Returns:
        The de-occluder (for `controlnet`, with its models loaded).

    Raises:
        ValueError: on an unknown backend (the message lists the valid ones).
        FileNotFoundError: (`MissingWeightsError`) when the controlnet backend cannot find its weights.
    """
    try:
        factory = DEOCCLUDERS[cfg.backend]
    except KeyError:
        raise ValueError(
            f"unknown deocclusion.backend {cfg.backend!r}; valid backends: {', '.join(sorted(DEOCCLUDERS))}"
        ) from None
    return factory(cfg, scorer)


__all__ = [
    "DEOCCLUDERS",
    "GPU_BACKENDS",
    "REASONS",
    "ColourFlexionScorer",
    "Deoccluder",
    "InpaintDeoccluder",
    "KeypointFlexionScorer",
    "RenderDeoccluder",
    "Scorer",
    "build_deoccluder",
    "uses_gpu",
]
