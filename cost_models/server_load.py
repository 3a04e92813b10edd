"""How server time grows with load, measured and fitted.

Model (documented in the manifest and the server's answers): a request that arrives behind q
queued or running requests waits

    wait = alpha * q * mean_service + beta

where mean_service is the server's moving mean compute time per request. alpha = 1, beta = 0 is a
single FIFO worker with independent requests; the fit absorbs what that ignores (the event loop,
decoding and encoding beside the worker, contention between them on the same cores).

The measurement runs the real server in its own process on loopback under 1, 2, 4, ... concurrent
clients sending whole-model requests; each answer says the queue length and the compute time, and
the client sees the total, so wait = total - compute - the idle round trip.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np

from ..runtime.bundle import LOAD_MODEL_FILE, LOAD_MODEL_FORMAT, Bundle
from ..runtime.client import InferenceClient
from ..runtime.protocol import cut_model_name
from ..runtime.tensors import random_inputs
from ..serving import LoadGenerator, start_server

__all__ = ["fit_load_model", "fit_server_load", "measure_load", "save_load_model"]


def measure_load(bundle: Bundle, url: str, clients: list[int], seconds: float, feeds: dict) -> list[dict]:
    """(clients, queue, mean_service_s, wait_s) of every answer, `seconds` per client count."""
    model, outputs = cut_model_name(bundle.name, 0), [t.name for t in bundle.outputs]
    idle = InferenceClient(url)
    rtt = statistics.median(idle.ready()[1] for _ in range(20))
    idle.close()
    points: list[dict] = []
    for n in clients:
        load = LoadGenerator(url, model, feeds, outputs, n)
        load.run_for(seconds)
        for sample in load.samples:
            p = sample.parameters
            points.append({"clients": n, "queue": float(p.get("queue_length", 0)),
                           "mean_service_s": float(p.get("mean_service_s", 0)),
                           "wait_s": max(sample.seconds - float(p.get("compute_s", 0)) - rtt, 0.0)})
    return points


def fit_load_model(points: list[dict]) -> dict:
    """Least squares for wait = alpha * q * mean_service + beta (alpha, beta >= 0)."""
    x = np.array([p["queue"] * p["mean_service_s"] for p in points])
    y = np.array([p["wait_s"] for p in points])
    design = np.column_stack([x, np.ones_like(x)])
    (alpha, beta), *_ = np.linalg.lstsq(design, y, rcond=None)
    alpha, beta = max(float(alpha), 0.0), max(float(beta), 0.0)
    predicted = alpha * x + beta
    mae = float(np.mean(np.abs(predicted - y)))
    return {**LOAD_MODEL_FORMAT.stamp(), "form": "wait = alpha * queue * mean_service + beta", "alpha": alpha,
            "beta": beta, "points": len(points), "mean_abs_error_s": mae,
            "clients": sorted({p["clients"] for p in points})}


def save_load_model(bundle_path: str | Path, model: dict) -> Path:
    return LOAD_MODEL_FORMAT.write(Path(bundle_path) / LOAD_MODEL_FILE, model)


def fit_server_load(bundle_path: str | Path, clients: list[int], seconds: float = 4.0) -> tuple[dict, Path]:
    """Serve the bundle in its own process, measure its wait under each client count, fit the model
    and save it beside the manifest, where the server reads it: (model, path)."""
    bundle = Bundle(bundle_path)
    with start_server(bundle.path) as server:
        points = measure_load(bundle, server.url, clients, seconds, random_inputs(bundle.inputs))
    model = fit_load_model(points)
    return model, save_load_model(bundle.path, model)
