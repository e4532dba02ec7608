"""The package's own exception types (all subclasses of the built-in ones users already
catch), and the one place that says how to get a missing optional part."""
from __future__ import annotations

import importlib.util


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the pip extra."""

    def __init__(self, package: str, extra: str, purpose: str):
        self.package, self.extra = package, extra
        super().__init__(f"{purpose} needs the optional package '{package}', which is not installed: "
                         f"pip install 'eager-kernels[{extra}]' (or pip install {package})")


class ConfigError(ValueError):
    """A setting (of EagerConfig) with a bad value. `field` names the setting, so that a
    caller can point at its own name for it (the server's `param`, a command-line flag)
    without reading the message; the message is the text users see."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(message)


class BackendUnavailableError(ValueError, RuntimeError):
    """The backend asked for cannot run the given tensors on this machine (a ValueError, as
    the issue of a bad argument; also a RuntimeError, what this case raised before)."""


class BatchInvarianceError(ValueError, RuntimeError):
    """An engine's batch-invariant mode cannot be claimed for this model, build or machine
    (LlamaCppEngine and TransformersEngine with batch_invariant=True); the message says why.
    A ValueError, as for a bad argument; a RuntimeError, as a probe's finding."""


_found: set = set()


def require(module: str, *, package: str | None = None, extra: str, purpose: str) -> None:
    """Raise MissingExtraError unless `module` can be imported (checked without importing
    it; a module once found is not looked up again)."""
    if module in _found:
        return
    if importlib.util.find_spec(module) is None:
        raise MissingExtraError(package or module, extra, purpose)
    _found.add(module)
