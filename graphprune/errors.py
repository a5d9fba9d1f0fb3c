"""Typed, user-facing errors.

Every error a user can cause (bad file, unsupported model, bad option, missing runtime) derives from
:class:`GraphpruneError`; the CLI prints it as one ``Error: ...`` line and exits 1.  Anything else that
escapes is a bug in graphprune (:class:`InternalError`) and is reported as such.
"""

from __future__ import annotations


class GraphpruneError(Exception):
    """Root of user-facing errors: the message says what, where, and what to do next."""

    exit_code = 1


class UsageError(GraphpruneError):
    """A bad option value or combination (exit code 2)."""

    exit_code = 2


class ModelLoadError(GraphpruneError):
    """The file is missing, unreadable, not ONNX, or fails the ONNX checker."""


class UnsafeModelError(ModelLoadError):
    """The model asks for something graphprune refuses to do, e.g. external data outside its folder."""


class UnsupportedModelError(GraphpruneError):
    """The model is valid ONNX but uses something graphprune cannot handle at all."""


class CouplingError(GraphpruneError):
    """A channel rule found an inconsistency it cannot resolve."""


class PassError(GraphpruneError):
    """A graph rewrite failed; the message names the pass and its position in the pipeline."""


class VerificationError(GraphpruneError):
    """The pruned model does not reproduce the masked reference within tolerance."""


class TargetUnavailableError(GraphpruneError):
    """A build/profile target cannot run here (library or execution provider missing)."""


class TargetError(GraphpruneError):
    """A target failed to build or run a model."""


class InternalError(Exception):
    """A bug in graphprune itself (never raised for bad input)."""
