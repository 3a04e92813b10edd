"""The manifest, the contract between compiler and runtime, as a typed view.

The compiler writes manifest.json; everything that reads it (the mobile runtime, the server, verify,
the cost stage, the benchmarks) goes through `Manifest.from_json`, which checks the format and
version (runtime/jsonfile.py's rule: same major version; a higher minor only adds fields) and turns
every section into frozen dataclasses. A missing or malformed field is a one-line BundleError
naming it, never a KeyError from deep inside a request.

Numbers are kept as the manifest has them (seconds, bytes); tensors become `TensorInfo`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .codec import CodecStats
from .errors import BundleError
from .jsonfile import JsonFormat
from .tensors import TensorInfo

__all__ = [
    "COST_CHOICES",
    "DEFAULT_PLANNER",
    "MANIFEST",
    "MANIFEST_FORMAT",
    "Artifact",
    "CutSpec",
    "Identity",
    "LayerSpec",
    "Manifest",
    "SegmentSpec",
    "Side",
    "SideCosts",
    "parse_costs",
]

MANIFEST = "manifest.json"
# 1.1: "externs", functions the artifacts call that the runtime provides. 2.0: schedules: "planner", the
# bundle's default planner; cuts name the model outputs already made on the mobile side "mobile_outputs"
# (1.x: "device_outputs"); layers give their "weight_bytes". This runtime reads 1.x bundles too (their
# planner is "prefix"). 2.1: "batching", the server side also built for batch sizes above 1 (its own
# artifact list, which a 2.0 reader does not look at).
MANIFEST_FORMAT = JsonFormat("neurosurgeon-bundle", (2, 2), "neurosurgeon bundle manifest", BundleError,
                             version_key="schema_version", hint="rebuild the bundle or update the runtime",
                             older=(1,), file=MANIFEST, folder="bundle", made_by="`neurosurgeon compile`")
DEFAULT_PLANNER = "prefix"
COST_CHOICES = ("measured", "predicted")  # the per-segment times a side may carry besides the chosen ones


class _Fields:
    """Reads fields of one manifest section, naming the path of a missing or mistyped one."""

    def __init__(self, doc, where: str, path: str = ""):
        self.doc, self.where, self.path = doc, where, path
        if not isinstance(doc, dict):
            raise BundleError(f"{where}: {path or 'the manifest'} must be a JSON object")

    def get(self, key: str, kind=None, default=...):
        if key not in self.doc:
            if default is ...:
                raise BundleError(f"{self.where}: the manifest lacks {self._name(key)}")
            return default
        value = self.doc[key]
        if kind is not None and (not isinstance(value, kind) or isinstance(value, bool) and bool not in _kinds(kind)):
            raise BundleError(f"{self.where}: {self._name(key)} has the wrong type ({type(value).__name__})")
        return value

    def section(self, key: str) -> _Fields:
        return _Fields(self.get(key, dict), self.where, self._name(key))

    def items(self, key: str) -> list[_Fields]:
        return [_Fields(item, self.where, f"{self._name(key)}[{i}]") for i, item in enumerate(self.get(key, list))]

    def tensors(self, key: str) -> tuple[TensorInfo, ...]:
        try:
            return tuple(TensorInfo.from_json(t) for t in self.get(key, list))
        except (KeyError, TypeError, ValueError) as err:
            raise BundleError(f"{self.where}: a tensor in {self._name(key)} is malformed ({err})") from None

    def strings(self, key: str) -> tuple[str, ...]:
        values = self.get(key, list, [])
        if not all(isinstance(v, str) for v in values):
            raise BundleError(f"{self.where}: {self._name(key)} must be a list of strings")
        return tuple(values)

    def seconds(self, key: str, required: bool = False) -> tuple[float, ...] | None:
        values = self.get(key, list, ... if required else None)
        if values is None:
            return None
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise BundleError(f"{self.where}: {self._name(key)} must be a list of numbers")
        return tuple(float(v) for v in values)

    def _name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key


def _codecs(m: _Fields) -> dict[str, dict[str, CodecStats]]:
    if "codecs" not in m.doc:
        return {}
    section = m.section("codecs")
    found = {}
    for codec in section.doc:
        tensors = section.section(codec)
        found[codec] = {}
        for name in tensors.doc:
            t = tensors.section(name)
            found[codec][name] = CodecStats(t.get("raw_bytes", int), t.get("bytes", int),
                                            t.get("encode_s", (int, float)), t.get("decode_s", (int, float)))
    return found


def _kinds(kind) -> tuple:
    return kind if isinstance(kind, tuple) else (kind,)


@dataclass(frozen=True)
class Identity:
    bundle_id: str
    model_name: str
    model_sha256: str
    tool_version: str
    tvm_version: str
    options: dict  # input shapes, partitioner, kernels, tuning: as the compiler recorded them


@dataclass(frozen=True)
class Side:
    """The preset one side of the split was built for."""

    preset: str
    device: str  # the TVM device its kernels run on: "cpu" or "cuda"
    machine: str  # ELF machine of its artifacts
    target: dict
    host: dict | None
    cuda_arch: str | None
    emulation: dict | None


@dataclass(frozen=True)
class LayerSpec:
    index: int
    name: str
    type: str
    ops: tuple[str, ...]
    config: dict
    flops: float
    input_bytes: int
    outputs: tuple[TensorInfo, ...]
    weight_bytes: int = 0  # schema 2.0; 0 in 1.x manifests

    @property
    def output_bytes(self) -> int:
        return sum(t.nbytes for t in self.outputs)


@dataclass(frozen=True)
class SegmentSpec:
    index: int
    layers: tuple[int, int]  # [first, end) layer indices
    flops: float
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]


@dataclass(frozen=True)
class CutSpec:
    """Cut k: segments 0..k-1 on the mobile side, the rest on the server."""

    index: int
    after_layer: str | None
    crossing: tuple[TensorInfo, ...]  # what the mobile side uploads
    upload_bytes: int
    mobile_outputs: tuple[str, ...]  # model outputs already complete on the mobile side
    server_outputs: tuple[str, ...]  # model outputs the server sends back
    download_bytes: int


@dataclass(frozen=True)
class Artifact:
    segment: int
    file: str  # relative to the bundle folder
    sha256: str
    bytes: int
    batch: int = 1  # the batch size it runs (its tensors' first dimension)


@dataclass(frozen=True)
class SideCosts:
    """Per-segment seconds the planner decides with (`segment_seconds`, from `source`), the other
    kinds the compiler had (predicted by a cost model, measured on the build machine), and power."""

    segment_seconds: tuple[float, ...]
    source: str
    predicted_seconds: tuple[float, ...] | None = None
    predicted_source: str | None = None
    measured_seconds: tuple[float, ...] | None = None
    measured_source: str | None = None
    power_w: tuple[float, ...] | float = 0.0
    power_source: str | None = None

    def kind(self, choice: str) -> tuple[tuple[float, ...], str] | None:
        """(seconds, source) of `choice` (one of COST_CHOICES), or None if the side has none."""
        seconds = getattr(self, f"{choice}_seconds")
        return None if seconds is None else (seconds, getattr(self, f"{choice}_source"))


@dataclass(frozen=True)
class Manifest:
    version: tuple[int, int]
    identity: Identity
    name: str  # the model's name
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    flops: float
    sides: dict[str, Side]  # "mobile", "server"
    layers: tuple[LayerSpec, ...]
    cuts: tuple[CutSpec, ...]
    segments: tuple[SegmentSpec, ...]
    artifacts: dict[str, tuple[Artifact, ...]]  # by preset
    externs: tuple[str, ...]
    costs: dict[str, SideCosts]  # by side; empty in a bundle made without a cost stage
    planner: str = DEFAULT_PLANNER  # the planner run.py uses unless told otherwise
    runtime_files: tuple[Artifact, ...] = ()  # run.py and the runtime copy (segment -1), with their sha256
    build: dict = field(default_factory=dict)
    batch_sizes: tuple[int, ...] = (1,)  # the server side's batch sizes (2.1)
    batch_artifacts: tuple[Artifact, ...] = ()  # the server preset's artifacts for batch sizes above 1
    # per codec, per tensor that may be uploaded: its coded size and coding times on calibration inputs (2.2)
    codecs: dict[str, dict[str, CodecStats]] = field(default_factory=dict)

    @classmethod
    def read(cls, bundle_dir: str | Path) -> Manifest:
        """The manifest of the bundle folder `bundle_dir`."""
        return cls.from_json(MANIFEST_FORMAT.read_folder(bundle_dir), str(Path(bundle_dir) / MANIFEST))

    @classmethod
    def from_json(cls, doc: dict, where: str = MANIFEST) -> Manifest:
        MANIFEST_FORMAT.check(doc, where)
        m = _Fields(doc, where)
        identity, model = m.section("identity"), m.section("model")
        manifest = cls(
            version=tuple(m.get("schema_version", list)),
            identity=Identity(identity.get("bundle_id", str), identity.get("model_name", str),
                              identity.get("model_sha256", str), identity.get("tool_version", str),
                              identity.get("tvm_version", str), identity.get("options", dict, {})),
            name=model.get("name", str),
            inputs=model.tensors("inputs"),
            outputs=model.tensors("outputs"),
            flops=model.get("flops", (int, float), 0),
            sides={side: _side(m.section("sides").section(side)) for side in ("mobile", "server")},
            layers=tuple(_layer(layer) for layer in m.items("layers")),
            cuts=tuple(_cut(cut) for cut in m.items("cuts")),
            segments=tuple(_segment(segment) for segment in m.items("segments")),
            artifacts={preset: tuple(_artifact(a) for a in m.section("artifacts").items(preset))
                       for preset in m.get("artifacts", dict)},
            externs=m.strings("externs"),
            costs=parse_costs(m.get("costs", dict, {}), where, "costs"),
            planner=m.get("planner", str, DEFAULT_PLANNER),
            runtime_files=tuple(Artifact(-1, _inside(f, "file"), f.get("sha256", str), f.get("bytes", int))
                                for f in m.items("runtime_files")) if "runtime_files" in doc else (),
            build=m.get("build", dict, {}),
            codecs=_codecs(m),
            **_batching(m),
        )
        manifest._check(where)
        return manifest

    def _check(self, where: str) -> None:
        n = len(self.segments)
        if [s.index for s in self.segments] != list(range(n)) or [c.index for c in self.cuts] != list(range(n + 1)):
            raise BundleError(f"{where}: segments must be numbered 0..S-1 and cuts 0..S ({n} segments, "
                              f"{len(self.cuts)} cuts)")
        self._check_dataflow(where)
        for side in self.sides.values():
            numbered = sorted(a.segment for a in self.artifacts.get(side.preset, ()))
            if numbered != list(range(n)):
                raise BundleError(f"{where}: artifacts.{side.preset} must have one artifact per segment 0..{n - 1}, "
                                  f"has {numbered}")
        numbered = sorted((a.batch, a.segment) for a in self.batch_artifacts)
        if numbered != [(b, i) for b in self.batch_sizes[1:] for i in range(n)]:
            raise BundleError(f"{where}: batching.artifacts must have one artifact per segment 0..{n - 1} for each "
                              f"batch size in {list(self.batch_sizes[1:])}")
        for side, costs in self.costs.items():
            for kind in ("segment", *COST_CHOICES):
                seconds = getattr(costs, f"{kind}_seconds")
                if seconds is not None and len(seconds) != n:
                    raise BundleError(f"{where}: costs.{side}.{kind}_seconds has {len(seconds)} values for {n} segments")

    def _check_dataflow(self, where: str) -> None:
        """The tensors add up: every segment reads what the model's inputs or earlier segments make
        (same shape and type), nothing is made twice, the outputs are made, each cut's crossing is
        exactly what later segments read of what was made before it, and the layers exist."""
        made = {t.name: t for t in self.inputs}
        before = [dict(made)]  # tensors available at each cut
        for s in self.segments:
            first, end = s.layers
            if not 0 <= first < end <= len(self.layers):
                raise BundleError(f"{where}: segment {s.index} covers layers {first}..{end - 1} of {len(self.layers)}")
            if len({t.name for t in s.inputs}) != len(s.inputs):
                raise BundleError(f"{where}: segment {s.index} lists an input twice")
            for t in s.inputs:
                if made.get(t.name) != t:
                    raise BundleError(f"{where}: segment {s.index} reads {_describe(t)}, "
                                      + (f"but it is made as {_describe(made[t.name])}" if t.name in made
                                         else "which neither a model input nor an earlier segment makes"))
            for t in s.outputs:
                if t.name in made:
                    raise BundleError(f"{where}: segment {s.index} makes {t.name!r}, which is made before it")
                made[t.name] = t
            before.append(dict(made))
        for t in self.outputs:
            if made.get(t.name) != t:
                raise BundleError(f"{where}: the model output {_describe(t)} is not what any segment makes")
        outputs = [t.name for t in self.outputs]
        for c in self.cuts:
            later = {t.name for s in self.segments[c.index:] for t in s.inputs}
            crossing = {t.name: t for t in c.crossing}
            needed = {name: t for name, t in before[c.index].items() if name in later}
            if crossing != needed:
                raise BundleError(f"{where}: cut {c.index} says {sorted(crossing)} cross it, but the segments after it "
                                  f"read {sorted(needed)} of what is made before it")
            done = [name for name in outputs if name in before[c.index]]
            if list(c.mobile_outputs) != done or list(c.server_outputs) != [n for n in outputs if n not in done]:
                raise BundleError(f"{where}: cut {c.index} splits the outputs into {list(c.mobile_outputs)} (mobile) "
                                  f"and {list(c.server_outputs)} (server); the segments make {done} before it")

    def artifact(self, side: str, segment: int, batch: int = 1) -> Artifact:
        preset = self.sides[side].preset
        entries = self.artifacts.get(preset, ()) if batch == 1 else self.batch_artifacts if side == "server" else ()
        for entry in entries:
            if entry.segment == segment and entry.batch == batch:
                return entry
        raise BundleError(f"no {preset} artifact for segment {segment}" + (f" at batch {batch}" if batch > 1 else "")
                          + " in the manifest (the runtime never compiles: rebuild the bundle with `neurosurgeon "
                            "compile`" + (" --server-batch" if batch > 1 else "") + ")")


def _describe(t: TensorInfo) -> str:
    return f"{t.name!r} ({t.dtype}{list(t.shape)})"


def _side(s: _Fields) -> Side:
    if s.get("device", str) not in ("cpu", "cuda"):
        raise BundleError(f"{s.where}: {s.path}.device must be cpu or cuda, not {s.get('device')!r}")
    return Side(s.get("name", str), s.get("device", str), s.get("machine", str), s.get("target", dict),
                s.get("host", (dict, type(None)), None), s.get("cuda_arch", (str, type(None)), None),
                s.get("emulation", (dict, type(None)), None))


def _layer(layer: _Fields) -> LayerSpec:
    return LayerSpec(layer.get("index", int), layer.get("name", str), layer.get("type", str),
                     layer.strings("ops"), layer.get("config", dict), layer.get("flops", (int, float)),
                     layer.get("input_bytes", int, 0), layer.tensors("outputs"), layer.get("weight_bytes", int, 0))


def _segment(segment: _Fields) -> SegmentSpec:
    layers = segment.get("layers", list)
    if len(layers) != 2 or not all(type(i) is int for i in layers):
        raise BundleError(f"{segment.where}: {segment.path}.layers must be [first, end], two integers; got {layers!r}")
    return SegmentSpec(segment.get("index", int), tuple(layers), segment.get("flops", (int, float), 0),
                       segment.tensors("inputs"), segment.tensors("outputs"))


def _cut(cut: _Fields) -> CutSpec:
    mobile_outputs = "mobile_outputs" if "mobile_outputs" in cut.doc else "device_outputs"  # schema 1's name
    return CutSpec(cut.get("index", int), cut.get("after_layer", (str, type(None)), None), cut.tensors("crossing"),
                   cut.get("upload_bytes", int), cut.strings(mobile_outputs), cut.strings("server_outputs"),
                   cut.get("download_bytes", int))


def _artifact(entry: _Fields) -> Artifact:
    return Artifact(entry.get("segment", int), _inside(entry, "file"), entry.get("sha256", str), entry.get("bytes", int))


def _batching(m: _Fields) -> dict:
    """The 2.1 batching section: batch sizes (1 first, then ascending) and the server's artifacts for
    the sizes above 1."""
    if "batching" not in m.doc:
        return {}
    section = m.section("batching")
    sizes = section.get("sizes", list)
    if not (sizes and sizes[0] == 1 and all(type(b) is int for b in sizes) and sizes == sorted(set(sizes))):
        raise BundleError(f"{m.where}: batching.sizes must be ascending integers starting at 1, got {sizes!r}")
    artifacts = section.section("artifacts")
    presets, server = list(artifacts.doc), m.section("sides").section("server").get("name", str)
    if presets != [server]:
        raise BundleError(f"{m.where}: batching.artifacts must list the server preset's ({server}), got {presets}")
    entries = tuple(Artifact(a.get("segment", int), _inside(a, "file"), a.get("sha256", str), a.get("bytes", int),
                             a.get("batch", int)) for a in artifacts.items(presets[0]))
    return {"batch_sizes": tuple(sizes), "batch_artifacts": entries}


def _inside(entry: _Fields, key: str) -> str:
    """A file name that stays inside the bundle folder (relative, no `..`)."""
    name = entry.get(key, str)
    parts = PurePosixPath(name).parts
    if not parts or name.startswith("/") or "\\" in name or ".." in parts:
        raise BundleError(f"{entry.where}: {entry._name(key)} {name!r} is not a path inside the bundle")
    return name


def parse_costs(doc: dict, where: str, path: str = "") -> dict[str, SideCosts]:
    """Side -> SideCosts of a manifest's costs section (or of a costs file, which has its layout)."""
    sides = _Fields(doc, where, path)
    return {side: _costs(sides.section(side)) for side in doc if side in ("mobile", "server")}


def _costs(c: _Fields) -> SideCosts:
    power = c.get("power_w", (list, int, float), 0.0)
    if isinstance(power, list):
        power = c.seconds("power_w")
    return SideCosts(c.seconds("segment_seconds", required=True), c.get("source", str, "?"),
                     c.seconds("predicted_seconds"), c.get("predicted_source", str, None),
                     c.seconds("measured_seconds"), c.get("measured_source", str, None),
                     power, c.get("power_source", str, None))
