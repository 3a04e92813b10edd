"""Errors a user can act on. Both halves raise them; the CLI prints their message, no traceback."""

__all__ = ["BundleError", "NeurosurgeonError", "first_line"]


class NeurosurgeonError(Exception):
    """A problem with the user's input or environment, stated in one line."""


class BundleError(NeurosurgeonError):
    """A bundle is missing, tampered with, or was built for something else."""


def first_line(err: BaseException) -> str:
    """The first non-empty line of an exception's message (at most 400 characters), or its type's name:
    what a one-line error quotes of a failure deep inside TVM or onnx."""
    text = str(err).strip() or type(err).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0][:400] if lines else type(err).__name__
