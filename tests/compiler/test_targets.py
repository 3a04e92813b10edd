"""Targets as data, and the artifacts each kind of preset produces."""

import subprocess

import pytest

from neurosurgeon.tools import zoo
from neurosurgeon.api import CompileOptions
from neurosurgeon.api import compile as compile_model
from neurosurgeon.runtime.bundle import Bundle, elf_machine
from neurosurgeon.targets import PresetError, get_preset, preset_names


def test_presets_the_issue_asks_for():
    assert {"aarch64-neon", "jetson-orin", "x86-host"} <= set(preset_names("mobile"))
    assert {"cuda-sm80", "cuda-sm90", "x86-host"} <= set(preset_names("server"))
    neon = get_preset("aarch64-neon")
    assert neon.machine == "aarch64" and neon.cxx == "aarch64-linux-gnu-g++" and "+neon" in neon.target["mattr"]
    orin = get_preset("jetson-orin")
    assert orin.cuda_arch == "sm_87" and orin.host["mtriple"] == "aarch64-linux-gnu"
    assert "libtvm_runtime_cuda.so" in orin.runtime_libs
    target, _ = get_preset("x86-host").resolved_target()
    assert target["mcpu"] not in ("@host", "native", "")  # the exact CPU, since `native` silently falls back


def test_unknown_or_misplaced_preset_lists_the_valid_ones():
    with pytest.raises(PresetError, match="unknown target preset 'pi5'; valid presets for the mobile side: aarch64-neon, jetson-orin, x86-host"):
        get_preset("pi5", "mobile")
    with pytest.raises(PresetError, match="'cuda-sm90' is not a mobile preset"):
        get_preset("cuda-sm90", "mobile")


def _needed_libraries(path) -> list[str]:
    out = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True, check=True).stdout
    return [line.split("[")[1].split("]")[0] for line in out.splitlines() if "(NEEDED)" in line]


@pytest.mark.parametrize("name", [n if n in {"alexnet", "inception"} else pytest.param(n, marks=pytest.mark.slow)
                                  for n in zoo.MODELS])
def test_aarch64_neon_build_gives_aarch64_shared_objects(name, tmp_path):
    size = zoo.min_input_size(name)
    model = tmp_path / f"{name}.onnx"
    zoo.save(zoo.build(name, input_size=size and max(size, 32), width=0.125), model)
    result = compile_model(model, tmp_path / "b", CompileOptions("aarch64-neon", "x86-host", progress=False))
    bundle = Bundle(result.path)
    for segment in range(len(bundle.segments)):
        mobile, _ = bundle.artifact("mobile", segment)
        server, _ = bundle.artifact("server", segment)
        assert elf_machine(mobile) == "aarch64" and elf_machine(server) == "x86_64"
        assert mobile.parent.name == "aarch64-neon" and server.parent.name == "x86-host"
    # the device needs only libc (and friends) beside TVM's runtime: nothing from the build machine
    assert set(_needed_libraries(mobile)) <= {"libc.so.6", "libm.so.6", "libstdc++.so.6", "libgcc_s.so.1", "ld-linux-aarch64.so.1"}
    assert result.manifest["sides"]["mobile"]["target"]["mtriple"] == "aarch64-linux-gnu"
