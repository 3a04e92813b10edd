"""What an evaluation measures (EvaluateOptions) and the key of one case (CaseKey)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ...runtime.planner import NETWORKS, OBJECTIVES

__all__ = ["DEFAULT_MODELS", "RAW", "CaseKey", "EvaluateOptions"]

# The papers' eight benchmarks and the three DAGs of the zoo, at input sizes that keep a run here short.
DEFAULT_MODELS = ("alexnet", "vgg16", "deepface", "lenet", "asr", "pos", "ner", "chk", "resnet18", "mobilenetv2",
                  "inception")
RAW = "raw"


@dataclass(frozen=True)
class CaseKey:
    """One case to measure: a model on a network, the device at a speed, the server with other clients."""

    model: str
    device: str
    clients: int
    network: str
    objectives: tuple[str, ...]
    variant: str = ""  # "hedged": the planner's choice measured with and without hedging, side by side

    def path(self, out: Path) -> Path:
        name = f"{self.network}-{self.clients}c" + (f"-{self.variant}" if self.variant else "")
        return out / RAW / self.model / self.device.replace(":", "-") / f"{name}.json"


@dataclass
class EvaluateOptions:
    models: tuple[str, ...] = DEFAULT_MODELS
    networks: tuple[str, ...] = tuple(NETWORKS)
    objectives: tuple[str, ...] = OBJECTIVES
    device: str = "dilate:16"
    # The device's compute power: a phone-class board's, as the aarch64-neon preset assumes
    # (cost_models/power_defaults.json), not the x86 machine's that emulates it.
    device_power_w: float = 3.0
    loads: tuple[int, ...] = (0, 2, 4)  # other clients on the server
    # the networks measured under load: Wi-Fi, as the paper's Fig. 15, where the server's queue decides
    # between cloud-only and the device. Over 3G the upload alone (1.3 s for AlexNet at 112) makes every
    # server-side choice lose whatever the queue; LTE (`--load-networks wifi lte`) adds 8 min to a run.
    load_networks: tuple[str, ...] = ("wifi",)
    requests: int = 10
    screen: int = 2
    input_size: int | None = 112  # image models; None: each model's own
    workdir: Path = Path(".cache/evaluate")
    progress: bool = True
    spread: bool = True  # measure how much each way to slow the device spreads (once, on the first model)
    extra: dict = field(default_factory=dict)

    # The model of the sweeps and the trace (None: none of them): the device's speed (dilation factors,
    # idle server, Wi-Fi and LTE), the server's load (other clients, Wi-Fi) and a falling uplink trace.
    focus_model: str | None = "alexnet"
    sweep: tuple[float, ...] = (1, 4, 16, 64)
    sweep_networks: tuple[str, ...] = ("wifi", "lte")
    load_sweep: tuple[int, ...] = (0, 1, 2, 4, 8)
    trace_network: str = "lte"
    hedge: bool = True  # the load sweep again, the planner's choice with and without hedging side by side
    # Datacenter throughput (after Neurosurgeon Fig. 16): bench load's simulated devices, per network
    datacenter: bool = True
    datacenter_mix: tuple[str, ...] = ("alexnet", "resnet18")
    datacenter_devices: int = 24
    datacenter_seconds: float = 6.0

    def config(self, key: CaseKey, bundle_sha: str) -> dict:
        """What a raw case depends on: a case measured under another config is measured again."""
        return {"device": key.device, "device_power_w": self.device_power_w, "requests": self.requests,
                **({"variant": key.variant} if key.variant else {}), "screen": self.screen,
                "objectives": list(key.objectives), "input_size": self.input_size, "bundle": bundle_sha}
