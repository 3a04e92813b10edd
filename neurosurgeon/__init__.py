"""neurosurgeon: ahead-of-time partition compiler for DNN inference split between device and server."""

__version__ = "0.1.0"
