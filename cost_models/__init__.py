"""Costs: what the planner predicts with. Per-layer-type regressions fitted to measured layer
profiles (Neurosurgeon's deployment phase: microbench.py builds the profile kit, profiling.py runs
it, fit.py fits, model.py evaluates), power tables, the server's load model, and the pipeline's cost
stage (annotate.py) that writes a bundle's per-segment costs into its manifest."""
