"""unveil: self-supervised pretraining of Hiera (MAE) and audio-video transformers (MAViL).

The repository's top-level folders are installed as sub-packages of this namespace:
``unveil.models``, ``unveil.datasets``, ``unveil.pretrain``, ``unveil.finetune``,
``unveil.launch`` and ``unveil.recipes`` (YAML only).
"""

__version__ = "0.1.0"
