"""Benchmarks (`neurosurgeon bench ...`): speed against onnxruntime (speed, suite), the request path
(serving), decision quality (decisions) and compile cost (compile). Each returns a JSON-able result
and has a function that formats it as a table."""
