"""User-facing error types, importable without torch so a bad input fails in well under a second.

Each names the file, key or model at fault and, where it can, how to fix it. All derive from
`InputError` (an input the user can fix: a stage reports it on one line and exits with status 2,
stages/_cli.py) and keep the built-in base their callers catch them by (ValueError, KeyError,
RuntimeError).
"""


class InputError(Exception):
    """An input the user can fix: params, a data file, a model, a checkpoint, a reward."""


class ParamsError(InputError, ValueError):
    """A params file that cannot be used; the message names the file and the key."""


class DataFileError(InputError, ValueError):
    """An input file that is missing, empty or malformed; the message names file and line."""


class ModelLoadError(InputError, RuntimeError):
    """A model folder or hub id that cannot be loaded."""


class CheckpointError(InputError, RuntimeError):
    """A checkpoint that exists but cannot be used."""


class OutputPathError(InputError, ValueError):
    """An output path that would replace or delete an input, another output or a checkpoint."""


class RewardLoadError(InputError, RuntimeError):
    """A reward model that cannot be loaded; the message names the source and how to fix it."""


class UnknownRewardError(InputError, KeyError):
    """A reward name the registry does not know."""

    def __str__(self) -> str:
        return str(self.args[0])


class UnknownRewardOptionError(InputError, ValueError):
    """A `reward_options` key the reward does not read."""


class RewardOptionError(InputError, ValueError):
    """A `reward_options` value the reward cannot use."""


class SweepError(InputError, ValueError):
    """A sweep grid, name or experiment that cannot be used (pipeline/sweep.py); the message names the key or
    experiment."""
