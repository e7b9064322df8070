"""Training objectives: one weighted loss each, composed from ``conf/objective/*.yaml``.

Adding one is a new module here (a subclass of :class:`Objective`) and a YAML file with its ``_target_`` and
``weight``; the LightningModule does not change.
"""

from radfm.train.objectives.answer import AnswerLoss
from radfm.train.objectives.base import AnswerTokens, Objective, ObjectiveContext, StepEncoding
from radfm.train.objectives.contrastive import ImageTextContrastive
from radfm.train.objectives.label_head import LabelHead
from radfm.train.objectives.patch_head import PatchHead

__all__ = ["AnswerLoss", "AnswerTokens", "ImageTextContrastive", "LabelHead", "Objective", "ObjectiveContext",
           "PatchHead", "StepEncoding"]
