"""The one exception type users see as a one-line message."""


class RsampleError(Exception):
    """Bad input or environment: the CLI prints it as `error: <message>` and exits 2, without a traceback."""
