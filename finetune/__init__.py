"""Downstream recipes on pretrained backbones: classification fine-tuning and the linear probe
(:mod:`.classification`), from any starting point unveil makes (:mod:`.backbone`)."""

from unveil.finetune.backbone import PretrainedBackbone, load_pretrained_backbone
from unveil.finetune.classification import ClassifierNet, FineTuneClassifier, LinearProbe

__all__ = ["ClassifierNet", "FineTuneClassifier", "LinearProbe", "PretrainedBackbone", "load_pretrained_backbone"]
