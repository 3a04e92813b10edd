"""The compiler: ONNX in, artifacts and a bundle out. frontend -> layers -> partition (analysis.py
runs the three) -> importer/kernels/cuda/tuning -> build -> pipeline (the staged compile, given its
cost stage) -> bundle (atomic writer) and codegen (the generated scripts)."""
