"""Errors a user can act on. Both halves raise them; the CLI prints their message, no traceback."""


class NeurosurgeonError(Exception):
    """A problem with the user's input or environment, stated in one line."""


class BundleError(NeurosurgeonError):
    """A bundle is missing, tampered with, or was built for something else."""
