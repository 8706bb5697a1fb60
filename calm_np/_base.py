"""The scikit-learn estimator protocol, without scikit-learn.

The one protocol mixin of calm_np: the estimator, the network and the
preprocessing transformers all use it.  ``ParamsMixin`` gives an
estimator whose ``__init__`` only stores its keyword arguments
``get_params``/``set_params`` (so ``sklearn.clone``, pipelines and grid
searches work), a ``repr`` that shows the changed
parameters, and the tags scikit-learn asks for (sklearn is imported only
when it asks).  Validation is not here: it runs in ``fit`` (``_checks``).
``restore_on_error`` makes a fit all-or-nothing: a failed fit leaves the
fitted attributes as they were.
"""

from __future__ import annotations

import contextlib
import inspect

import numpy as np


class ParamsMixin:
    """``get_params``, ``set_params``, ``__repr__`` and tags from ``__init__``."""

    @classmethod
    def _get_param_names(cls):
        if cls.__init__ is object.__init__:
            return []  # nothing to set (e.g. a transformer without parameters)
        sig = inspect.signature(cls.__init__)
        return sorted(
            name
            for name, p in sig.parameters.items()
            if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        )

    def get_params(self, deep=True):
        """Parameters of this estimator (scikit-learn protocol)."""
        return {name: getattr(self, name) for name in self._get_param_names()}

    def set_params(self, **params):
        """Set parameters (scikit-learn protocol); returns ``self``."""
        valid = self._get_param_names()
        for key, value in params.items():
            if key not in valid:
                raise ValueError(
                    f"invalid parameter {key!r} for {type(self).__name__}; valid "
                    f"parameters are {valid}"
                )
            setattr(self, key, value)
        return self

    def __repr__(self):
        defaults = {
            name: p.default
            for name, p in inspect.signature(type(self).__init__).parameters.items()
        }
        changed = []
        for name in self._get_param_names():
            value = getattr(self, name)
            default = defaults.get(name)
            if isinstance(value, np.ndarray) or not _same(value, default):
                shown = "array(...)" if hasattr(value, "shape") else repr(value)
                changed.append(f"{name}={shown}")
        return f"{type(self).__name__}({', '.join(changed)})"

    def __sklearn_tags__(self):
        from sklearn.utils import Tags, TargetTags, TransformerTags

        return Tags(
            estimator_type=None,
            target_tags=TargetTags(required=False),
            transformer_tags=TransformerTags(),
        )


def _same(a, b):
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return a is b


@contextlib.contextmanager
def restore_on_error(obj, names):
    """Restore the attributes ``names`` of ``obj`` if the block raises."""
    snapshot = {k: obj.__dict__[k] for k in names if k in obj.__dict__}
    try:
        yield
    except BaseException:
        for k in names:
            obj.__dict__.pop(k, None)
        obj.__dict__.update(snapshot)
        raise
