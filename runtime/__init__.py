"""The slim half: reads bundles and runs prebuilt segments.

Imports only numpy, the standard library and TVM's runtime; never the compiler, onnx,
scikit-learn, networkx or jinja2 (a device has none of them).
"""
