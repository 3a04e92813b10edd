"""Property-based fuzzing of the runtime with mutated manifests: fields deleted, retyped, renumbered,
renamed, pointed elsewhere.

The promise under test: the bundle's runtime (`run`) and the server either answer exactly as
onnxruntime does, or refuse with a one-line error (exit 2 for `run`) having written nothing and
loaded none of the bundle's code (no artifact of the bundle is mapped into the process).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from neurosurgeon.runtime.bundle import Bundle
from neurosurgeon.runtime.commands import run_bundle_main
from neurosurgeon.runtime.errors import NeurosurgeonError
from neurosurgeon.runtime.manifest import MANIFEST
from neurosurgeon.runtime.server import InferenceServer
from neurosurgeon.runtime.tensors import random_inputs
from neurosurgeon.tools import zoo
from neurosurgeon.tools.verify import reference_outputs

from neurosurgeon.api import CompileOptions
from neurosurgeon.api import compile as compile_model

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 2**40), st.floats(allow_nan=False),
                         st.sampled_from(["", "x", "output", "../../etc/passwd", "/bin/sh", "cuda", "float64"]))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                                st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                           max_leaves=6)


def paths(doc, prefix=()):
    """Every (path, value) in a JSON document, containers included."""
    yield prefix, doc
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for key, value in items:
        yield from paths(value, (*prefix, key))


def mutated(doc: dict, data) -> tuple[dict, str]:
    """A copy of `doc` with one field deleted, replaced or nudged; and what was done."""
    doc = json.loads(json.dumps(doc))
    everything = [p for p, _ in paths(doc) if p]
    path = data.draw(st.sampled_from(everything))
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    key, value = path[-1], parent[path[-1]]
    strings = sorted({v for _, v in paths(doc) if isinstance(v, str)})
    kind = data.draw(st.sampled_from(["delete", "replace", "nudge", "swap"]))
    if kind == "delete":
        del parent[key]
    elif kind == "nudge" and isinstance(value, (int, float)) and not isinstance(value, bool):
        parent[key] = data.draw(st.sampled_from([value + 1, value - 1, -value, 0, value * 1000]))
    elif kind == "nudge" and isinstance(value, list) and value:
        parent[key] = value[:-1] if data.draw(st.booleans()) else [*value, value[-1]]
    elif kind == "swap" and isinstance(value, str):  # another name or file the manifest uses
        parent[key] = data.draw(st.sampled_from(strings))
    else:
        parent[key] = data.draw(json_values)
    return doc, f"{kind} {'.'.join(map(str, path[:3]))}"


def mapped_from(folder: Path) -> list[str]:
    """Files under `folder` that this process has mapped (a loaded shared object shows up here)."""
    prefix = str(folder.resolve())
    with open("/proc/self/maps") as maps:
        return sorted({line.split()[-1] for line in maps if line.rstrip().split()[-1].startswith(prefix)})


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    root = tmp_path_factory.mktemp("manifest-fuzz")
    model = zoo.build("lenet", width=0.25)
    compile_model(model, root / "lenet.bundle", CompileOptions("x86-host", "x86-host", progress=False))
    bundle = Bundle(root / "lenet.bundle")
    feeds = random_inputs(bundle.inputs, seed=5)
    np.savez(root / "feeds.npz", **feeds)
    return root, json.loads((root / "lenet.bundle" / MANIFEST).read_text()), reference_outputs(model, feeds)


def one_line_error(err: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "error" in lines[0] and "Traceback" not in err, err


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(st.data())
def test_a_mutated_manifest_runs_correctly_or_is_refused_in_one_line_before_any_code_loads(
        lenet, tmp_path_factory, capsys, data):
    root, manifest, reference = lenet
    doc, what = mutated(manifest, data)
    copy = tmp_path_factory.mktemp("mutant") / "lenet.bundle"
    shutil.copytree(root / "lenet.bundle", copy)
    (copy / MANIFEST).write_text(json.dumps(doc))
    out = copy.parent / "out.npz"
    capsys.readouterr()
    code = run_bundle_main([str(copy), "--cut", "all", "--input", str(root / "feeds.npz"), "-o", str(out), "--json"])
    err = capsys.readouterr().err
    event(f"run: exit {code}")
    if code == 0:
        with np.load(out) as saved:
            for name, value in saved.items():
                expected = reference[name.split("/", 1)[1]]
                np.testing.assert_allclose(value, expected, rtol=1e-4, atol=1e-5, err_msg=f"{what}: {name}")
    else:
        assert code == 2, err
        one_line_error(err)
        assert not out.exists(), f"{what}: a refused run wrote its output"
        assert mapped_from(copy) == [], f"{what}: refused ({err.strip()}) after loading bundle code"
    try:
        InferenceServer(copy).close()
        event("server: loads")
    except NeurosurgeonError as error:
        event("server: refuses")
        one_line_error(f"error: {error}")
