"""Config capture: a model records the arguments it was built with, read from its constructor's signature,
so that ``type(model)(**model.config)`` builds the same architecture (``unveil.common.checkpoints`` stores it
in checkpoints and exported backbones)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

__all__ = ["records_config"]


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
