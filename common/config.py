"""Config capture: a model records the arguments it was built with, read from its constructor's signature,
so that ``type(model)(**model.config)`` builds the same architecture (``unveil.common.checkpoints`` stores it
in checkpoints and exported backbones)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import asdict, is_dataclass, replace
from typing import Any

__all__ = ["as_options", "builtin_fields", "plain_options", "records_config"]


def _frozen(value: Any) -> Any:
    """Lists (as YAML gives them) become tuples, at every depth, so configs compare equal however built."""
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return value


def records_config(init: Callable) -> Callable:
    """Decorate a module's ``__init__`` so that, once it has run, ``self.config`` holds every argument of its
    signature by name, defaults filled in, lists as tuples.

    Only the ``__init__`` of the instance's own class records: a subclass whose ``__init__`` is decorated too
    records its own arguments, not its parent's; one whose ``__init__`` is not decorated records nothing
    (``unveil.common.checkpoints.architecture_of`` then returns None rather than a config its constructor
    would not take). Nothing is copied by hand, so the record cannot drift from the signature.
    """
    signature = inspect.signature(init)
    parameters = list(signature.parameters.values())
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in parameters):
        raise TypeError(
            f"records_config: {init.__qualname__} takes *args or **kwargs, which cannot be recorded"
        )

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        init(self, *args, **kwargs)
        if type(self).__init__ is wrapper:
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            self.config = {name: _frozen(value) for name, value in list(bound.arguments.items())[1:]}

    return wrapper


def as_options(owner: str, argument: str, value, kind: type, default=None):
    """``value`` as a ``kind`` dataclass (an options group such as ``OptimizerConfig`` or ``ShardOptions``):
    one already, or a mapping of its fields (YAML, a checkpoint's hparams, a Python call). A mapping that
    names only some fields takes the rest from ``default`` (the owner's defaults) when given.

    A bad field fails with one line naming it under the owner's argument (``MAEPretrainModule.optimizer.lr``).
    """
    if isinstance(value, kind):
        return value
    if isinstance(value, Mapping):
        try:
            return replace(default, **value) if default is not None else kind(**value)
        except (TypeError, ValueError) as error:
            message, field = str(error), f"{kind.__name__}."
            if message.startswith(field):  # a field's own check: name it by its key under the owner
                raise ValueError(f"{owner}.{argument}.{message[len(field) :]}") from None
            raise ValueError(f"{owner}.{argument}: {message}") from None
    raise ValueError(f"{owner}.{argument} must be a {kind.__name__} or a mapping of its fields, got {value!r}")


def plain_options(hparams: dict) -> None:
    """Turn the options dataclasses in a module's saved ``hparams`` into mappings, in place: checkpoints then
    hold only plain types (``torch.load(weights_only=True)`` reads them), and a mapping builds the dataclass
    again (:func:`as_options`)."""
    for name, value in hparams.items():
        if is_dataclass(value) and not isinstance(value, type):
            hparams[name] = {field: _builtin(item) for field, item in asdict(value).items()}


def builtin_fields(options: Any) -> None:
    """Make every field of an options dataclass a builtin value, in place (call from ``__post_init__``): the
    values then reach optimisers, schedulers and checkpoints as plain ``float``/``int``, never as the
    constrained subclasses jsonargparse builds, which ``torch.load(weights_only=True)`` refuses."""
    for name, value in vars(options).items():
        object.__setattr__(options, name, _builtin(value))


def _builtin(value: Any) -> Any:
    """A value of a builtin type: jsonargparse's constrained types (``PositiveInt``, ``NonNegativeFloat``, ...)
    subclass ``int`` and ``float``, and ``torch.load(weights_only=True)`` refuses their class."""
    if isinstance(value, bool) or value is None:
        return value
    for kind in (int, float, str):
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_builtin(item) for item in value)
    if isinstance(value, Mapping):
        return {key: _builtin(item) for key, item in value.items()}
    return value
