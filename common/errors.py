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
