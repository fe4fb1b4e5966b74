"""User-facing error types, importable without torch so a bad input fails in well under a second."""


class ModelLoadError(RuntimeError):
    """A model folder or hub id that cannot be loaded."""


class CheckpointError(RuntimeError):
    """A checkpoint that exists but cannot be used."""
