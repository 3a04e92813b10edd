"""The Python API: one function per verb of the command line, for scripts and notebooks. The CLI
(neurosurgeon/cli/) parses arguments, calls these and prints what they return; the developer and
evaluator tools (neurosurgeon.tools: zoo, verify, demo, emulated board, benchmarks) have their own
functions and build on these.

    from neurosurgeon import api
    frozen, graph, plan = api.analyse("alexnet.onnx")
    result = api.compile("alexnet.onnx", "alexnet.bundle", api.CompileOptions("aarch64-neon", "cuda-sm90"))
    report = api.tune("alexnet.onnx", api.TuneOptions("x86-host", "x86.tuning", budget_s=600))
    outcome = api.profile_target("x86-host", "x86.profile.json")
    fitted = api.fit("x86.profile.json", "x86.costmodel.json")
    api.serve("alexnet.bundle", port=8000)
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import onnx

from .compiler.analysis import analyse
from .compiler.pipeline import CompileOptions, CompileResult, compile_model
from .compiler.tuning import TuneOptions, TuneReport, tune
from .cost_models.annotate import CostAnnotation
from .cost_models.profiling import ProfileOutcome, board_instructions, profile_target
from .cost_models.server_load import fit_server_load
from .runtime.bundle import Bundle
from .runtime.measured import measure_bundle
from .serving import serve

if TYPE_CHECKING:  # scikit-learn loads only when fitting
    from .cost_models.fit import Fit

__all__ = ["CompileOptions", "CompileResult", "CostAnnotation", "ProfileOutcome", "TuneOptions", "TuneReport",
           "analyse", "board_instructions", "compile", "fit", "fit_server_load", "keygen", "measure", "profile_target",
           "serve", "tune"]


def compile(model: str | Path | onnx.ModelProto, out: str | Path, options: CompileOptions,
            costs: CostAnnotation | None = None, name: str | None = None) -> CompileResult:
    """Compile `model` into a bundle at `out`, with the cost stage `costs` (default: segments measured
    here where the target runs on this machine, estimated from FLOPs elsewhere) unless `options`
    already names one."""
    return compile_model(model, out, replace(options, costs=costs or options.costs or CostAnnotation()), name)


def keygen(out: str | Path, force: bool = False) -> tuple[Path, Path]:
    """An Ed25519 key pair for signing bundles: `out` (the private key, PKCS#8 PEM, mode 600) and, beside
    it, OUT.pub.pem (the public key), as `openssl genpkey -algorithm ed25519` and `openssl pkey -pubout` write."""
    import os

    from .runtime import signing
    from .runtime.errors import NeurosurgeonError

    private = Path(out)
    public = private.with_name(private.name.removesuffix(".pem") + ".pub.pem")
    for path in (private, public):
        if path.exists() and not force:
            raise NeurosurgeonError(f"{path}: already exists; pass --force to replace it")
    seed = os.urandom(32)
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(signing.private_key_pem(seed))
    public.write_text(signing.public_key_pem(signing.public_key(seed)))
    return private, public


def measure(bundle: str | Path, side: str = "mobile", repeats: int = 5) -> Path:
    """Time a bundle's own segments on this machine (measured mode): the planner then decides with them."""
    return measure_bundle(Bundle(bundle), side, repeats)


def fit(profile: str | Path, out: str | Path, report: str | Path | None = None, seed: int = 0) -> Fit:
    """Fit the per-layer-type cost regressions to a profile; write the cost model (and a plot)."""
    from .cost_models.fit import fit as fit_profile
    from .cost_models.fit import load_profile
    from .cost_models.report import write_fit

    result = fit_profile(load_profile(profile), seed=seed)
    write_fit(result, out, report)
    return result
