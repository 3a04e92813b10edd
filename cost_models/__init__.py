"""Per-segment cost estimates for the planner: measured where the target runs on the build machine,
estimated from FLOPs elsewhere (fitted per-layer-type regressions replace the estimate later)."""
