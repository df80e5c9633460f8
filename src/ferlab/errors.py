"""The one exception type for user mistakes: the CLI prints its message as one line and exits non-zero."""


class FerlabError(Exception):
    """A user-facing error (bad file, row, key or value). The message names what is wrong and where."""


class DataNotFound(FerlabError):
    """A dataset's file or folder is not on disk (ferlab never downloads a dataset)."""
