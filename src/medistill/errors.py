"""The one base class of medistill's user-facing errors: the CLI prints their message without a traceback."""


class MedistillError(ValueError):
    """Bad input (a file, field or value), with a message naming it and what was expected."""
