"""Time a bundle's own segments on the machine this runs on (the device or the server): the
"measured" costs the planner can use instead of predictions. Runtime-only, like the rest of runtime/."""

from __future__ import annotations

import time

import numpy as np

from .bundle import Bundle, SegmentExecutor


def time_segments(bundle: Bundle, side: str, repeats: int = 5, seed: int = 0) -> list[float]:
    """Median seconds of each segment over `repeats` runs, after one warm-up pass of the whole chain
    that also produces every segment's real inputs."""
    executor = SegmentExecutor(bundle, side)
    rng = np.random.default_rng(seed)
    env: dict = {t.name: rng.standard_normal(t.shape).astype(t.dtype) for t in bundle.inputs}
    executor.run(env, range(len(bundle.segments)))
    medians = []
    for index in range(len(bundle.segments)):
        samples = []
        for _ in range(repeats):
            scratch = dict(env)
            started = time.perf_counter()
            executor.run(scratch, (index,))
            samples.append(time.perf_counter() - started)
        medians.append(float(np.median(samples)))
    return medians
