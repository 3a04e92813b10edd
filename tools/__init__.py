"""The tools a developer or evaluator uses, apart from the product: the papers' benchmark networks
(zoo), the check of a bundle against onnxruntime (verify), the README's demo, the emulated aarch64
board, and the benchmarks (bench/). They build on the product packages; nothing in those imports them."""
