"""Tuning as a build step: MetaSchedule over the distinct workloads (fused TIR functions) of a model's
segments, and the tiles of its tiled convolutions, kept in a tuning folder per target preset that
`compile --tuning DIR` applies.

    report = tune("alexnet.onnx", TuneOptions("x86-host", "x86-host.tuning", budget_s=600))
    compile_model("alexnet.onnx", "b/", CompileOptions("x86-host", "x86-host", tuning="x86-host.tuning"))

- workloads.py: which fused functions the segments make (one task per distinct function);
- folder.py: the tuning folder's format (MetaSchedule's JSON database plus tuning.json);
- measure.py: the in-process builder, and the runners that time candidates here, on a board
  through TVM RPC, or not at all;
- search.py: `tune()`: first the tiled convolutions' tiles (compiler/tiled_kernels.py `conv_variants`,
  each choice timed, the fastest recorded in tuning.json), then rounds of random then evolutionary
  search within a budget, resumable;
- tuned_build.py: the build pipeline with the folder's schedules applied (`compile_tuned`).
"""

from .folder import TuningError, database_sha256, read_tuning_info, tuning_identity
from .search import DEFAULT_TRIALS, TuneOptions, TuneReport, tune
from .tuned_build import compile_tuned, tuned_pipeline
from .workloads import Workload, extract_workloads, segment_workloads

__all__ = ["DEFAULT_TRIALS", "TuneOptions", "TuneReport", "TuningError", "Workload", "compile_tuned",
           "database_sha256", "extract_workloads", "read_tuning_info", "segment_workloads", "tune",
           "tuned_pipeline", "tuning_identity"]
