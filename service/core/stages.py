"""The stain stages, one entry each: what the chain, the model loader, the card reader and the
defaults derive from (a new stage is its module plus one entry here).

The table's order is the order the chain runs the stages in; its names are
``service.vocabulary.options.StageName`` (the words the API and the CLI accept; a test holds the
two together), and each model-backed stage's card role is its name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from service.vocabulary.options import StageName

ModelKind = Literal["onnx", "card"]  # an ONNX network beside its card, or a card alone


@dataclass(frozen=True)
class Stage:
    """One stage of the chain.

    ``model``: what it loads from the models folder (``None``: nothing, it is plain numpy);
    its card role is the stage's name. ``halo_px``: the context the stage needs on every side
    (a network's card states its own halo instead). ``off_when``: (card role, card field): the
    stage is installed but left out of the default chain when that card says ``false`` there
    (a model stage's own ``default``; the median after a despeckler that measured better alone).
    """

    name: StageName
    model: ModelKind | None = None
    halo_px: int = 0
    off_when: tuple[str, str] | None = None

    @property
    def role(self) -> str | None:
        """The card role of the model this stage runs (its name), None without a model."""
        return self.name if self.model is not None else None


STAGE_TABLE: tuple[Stage, ...] = (
    Stage("despeckle", model="onnx", off_when=("despeckle", "default")),
    Stage("median", halo_px=1, off_when=("despeckle", "median_after")),
    Stage("gareau"),
    Stage("colour", model="card", off_when=("colour", "default")),
    Stage("generator", model="onnx", off_when=("generator", "default")),
)
STAGE_BY_NAME: dict[str, Stage] = {stage.name: stage for stage in STAGE_TABLE}
REQUIRED_STAGE = "gareau"  # turns FCM and RCM into colour: every chain runs it
MODEL_STAGES: tuple[str, ...] = tuple(s.name for s in STAGE_TABLE if s.model is not None)
NETWORK_ROLES: tuple[str, ...] = tuple(s.name for s in STAGE_TABLE if s.model == "onnx")
CARD_ROLES: tuple[str, ...] = MODEL_STAGES  # the model-card schema's role enum
