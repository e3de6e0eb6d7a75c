"""Errors a user can hit. Each message names the problem and the fix."""


class TitanError(Exception):
    """Base class: a user-facing error with an actionable message."""


class ModelNotFoundError(TitanError, FileNotFoundError):
    pass


class UnknownPresetError(TitanError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0] if self.args else ""


class UnsupportedTensorTypeError(TitanError, ValueError):
    pass


class PromptTooLongError(TitanError, ValueError):
    pass


class DeviceUnavailableError(TitanError, RuntimeError):
    pass


class AssetMissingError(TitanError, FileNotFoundError):
    pass


class CorruptModelFileError(TitanError, ValueError):
    """A model file that exists but cannot be parsed (a truncated download, a file that is not what its name says)."""


class InvalidOptionError(TitanError, ValueError):
    """A bad value for a loading option (dtype, device, num_layers): the message names the option and what it takes."""
