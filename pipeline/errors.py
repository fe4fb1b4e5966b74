"""User-facing error types, importable without torch so a bad input fails in well under a second.

Every one names the file, key or model at fault and, where it can, how to fix it.
"""


class ParamsError(ValueError):
    """A params file that cannot be used; the message names the file and the key."""


class DataFileError(ValueError):
    """An input file that is missing, empty or malformed; the message names file and line."""


class ModelLoadError(RuntimeError):
    """A model folder or hub id that cannot be loaded."""


class CheckpointError(RuntimeError):
    """A checkpoint that exists but cannot be used."""


class RewardLoadError(RuntimeError):
    """A reward model that cannot be loaded; the message names the source and how to fix it."""


class UnknownRewardError(KeyError):
    """A reward name the registry does not know."""

    def __str__(self) -> str:
        return str(self.args[0])


class UnknownRewardOptionError(ValueError):
    """A `reward_options` key the reward does not read."""
