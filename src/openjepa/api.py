"""Names of the public API that are both a package and its main function (``openjepa.evaluate``,
``openjepa.finetune``): once the package is imported the name holds the package, so calling the
package calls the function."""

from __future__ import annotations

import sys
import types
from collections.abc import Callable


def make_callable(package: str, function: Callable) -> None:
    """Calling the module ``package`` (already in ``sys.modules``) calls ``function``."""

    class CallablePackage(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return function(*args, **kwargs)

    sys.modules[package].__class__ = CallablePackage
