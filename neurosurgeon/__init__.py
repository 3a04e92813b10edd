"""neurosurgeon: ahead-of-time partition compiler for DNN inference split between a mobile side and a server."""

__version__ = "0.1.0"

from . import runtime as _runtime  # noqa: E402,F401  (sets how TVM binds threads before TVM loads)
