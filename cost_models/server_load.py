"""How server time grows with load, measured and fitted.

Model (documented in the manifest and the server's answers): a request that arrives behind q
queued or running requests waits

    wait = alpha * q * mean_service + beta

where mean_service is the server's moving mean compute time per request. alpha = 1, beta = 0 is a
single FIFO worker with independent requests; the fit absorbs what that ignores (the event loop,
decoding and encoding beside the worker, contention between them on the same cores).

The measurement runs the real server on loopback under 1, 2, 4, ... concurrent clients sending
whole-model requests; each answer says the queue length and the compute time, and the client sees
the total, so wait = total - compute - the idle round trip.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from pathlib import Path

import numpy as np

from ..runtime.bundle import LOAD_MODEL_FILE, Bundle
from ..runtime.client import InferenceClient
from ..runtime.protocol import cut_model_name

def measure_load(bundle_path: str | Path, url: str, clients: list[int], seconds: float, feeds: dict) -> list[dict]:
    bundle = Bundle(bundle_path)
    model = cut_model_name(bundle.name, 0)
    outputs = [t.name for t in bundle.outputs]
    idle = InferenceClient(url)
    rtt = statistics.median(idle.ready()[1] for _ in range(20))
    points: list[dict] = []
    for n in clients:
        lock = threading.Lock()
        stop = time.perf_counter() + seconds

        def client_loop(n=n, stop=stop):
            client = InferenceClient(url)
            while time.perf_counter() < stop:
                answer = client.infer(model, feeds, outputs, deadline_s=120)
                p = answer.parameters
                with lock:
                    points.append({"clients": n, "queue": float(p.get("queue_length", 0)),
                                   "mean_service_s": float(p.get("mean_service_s", 0)),
                                   "wait_s": max(answer.seconds - float(p.get("compute_s", 0)) - rtt, 0.0)})
            client.close()

        threads = [threading.Thread(target=client_loop) for _ in range(n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
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
    return {"form": "wait = alpha * queue * mean_service + beta", "alpha": alpha, "beta": beta,
            "points": len(points), "mean_abs_error_s": mae,
            "clients": sorted({p["clients"] for p in points})}


def save_load_model(bundle_path: str | Path, model: dict) -> Path:
    path = Path(bundle_path) / LOAD_MODEL_FILE
    path.write_text(json.dumps(model, indent=1) + "\n")
    return path
