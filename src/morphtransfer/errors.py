"""One exception type for bad user input, caught once in the CLI and printed without a traceback."""


class InputError(Exception):
    """Bad user input: the message names the file or galaxy, what was wrong and what to do."""
