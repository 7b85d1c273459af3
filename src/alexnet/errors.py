"""Exceptions for problems a user can fix. The CLI prints them as one line and exits non-zero."""


class AlexNetError(Exception):
    """Base class: a user-facing error with a message that names the problem."""


class ConfigError(AlexNetError, ValueError):
    """An invalid option or combination of options."""


class UnknownModelError(ConfigError, KeyError):
    """A model name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class DataError(AlexNetError):
    """Missing, empty or unreadable data."""


class CheckpointError(AlexNetError):
    """A file that is not a usable checkpoint, or one that does not fit the request."""


class TrainingError(AlexNetError):
    """Training cannot go on (e.g. a non-finite loss)."""
