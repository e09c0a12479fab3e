"""One root error; the CLI turns any of them into a one-line message and an exit code."""

from __future__ import annotations


class YexportError(Exception):
    """Root of every error yexport raises on purpose. ``exit_code`` is what the CLI returns."""

    exit_code = 2


class InputError(YexportError):
    """A file the user named is missing, unreadable, corrupt or of the wrong kind."""


class ConfigError(YexportError):
    """Bad options, a bad YAML config or an invalid combination of flags."""


class ModelError(YexportError):
    """A model config that cannot be built (unknown module, bad ``from``, wrong arguments)."""


class CheckpointError(YexportError):
    """A checkpoint that cannot be loaded safely (unknown pickled global, bad layout)."""


class MissingDependency(YexportError):
    """An optional tool or package is not installed; the message names what to install."""


class StageError(YexportError):
    """An export stage failed; the message names the stage and the stages that ran before it."""

    exit_code = 1

    def __init__(self, stage: str, before: list[str], cause: BaseException) -> None:
        self.stage, self.before, self.cause = stage, list(before), cause
        if isinstance(cause, YexportError):
            self.exit_code = cause.exit_code  # a usage error inside a stage is still a usage error
        after = f" after: {', '.join(before)}" if before else ""
        super().__init__(f"stage '{stage}' failed{after}: {cause}")


class ParityError(YexportError):
    """The check could not be carried out on a file that loaded (e.g. onnxruntime failed running it)."""

    exit_code = 1


def first_line(exc: BaseException | str) -> str:
    """The first non-empty line of an error message, or the exception's type name when it has none."""
    text = str(exc).strip()
    if text:
        return text.splitlines()[0]
    return type(exc).__name__ if isinstance(exc, BaseException) else "error"
