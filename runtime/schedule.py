"""Schedules: which side runs each segment, and what that costs.

A schedule is the side of every segment. It runs in stages: starting on the mobile side, a stage
runs every segment of its side whose inputs are ready (in segment order, which is topological),
then the other side takes over, until every segment has run; this is the fewest stages a schedule
can run in. The server keeps nothing between requests, so a server stage is one request: it
uploads every tensor its segments read that it does not make itself, and its answer brings back
every tensor it made that anything after it reads (a later stage on either side, or the model's
outputs, which end on the mobile side). A Neurosurgeon cut k is the schedule "segments 0..k-1 on
the mobile side": one mobile stage, then one server stage.

What a schedule costs is linear in the conditions of a request, through terms that depend only on
the schedule: per schedule, its mobile compute time and energy, its server compute time, the bytes
it uploads and downloads, and its server stages (round trips, each paying the RTT and the server's
queue). `ScheduleTerms` holds those for a batch of schedules, so that planners evaluate thousands
of candidates with a few matrix-vector products, and every planner reports a schedule's cost from
the same numbers the tests check by brute force.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np

from .errors import NeurosurgeonError

__all__ = ["MOBILE", "SERVER", "Schedule", "ScheduleTerms", "Stage", "StageError", "TensorGraph", "plan_stages"]

MOBILE, SERVER = "mobile", "server"


class StageError(NeurosurgeonError):
    """A stage that cannot run: a schedule written wrongly, or tensors that do not make what is wanted."""


@dataclass(frozen=True)
class TensorGraph:
    """The segments as a graph of the tensors that may cross between sides: each segment's inputs
    and outputs, every tensor's bytes, who makes it (-1: a model input, made on the mobile side)
    and who reads it; the model's outputs are read by the end, on the mobile side."""

    n: int  # segments
    names: tuple[str, ...]
    nbytes: np.ndarray  # per tensor
    producer: np.ndarray  # per tensor: segment index, or -1 for a model input
    reads: tuple[tuple[int, ...], ...]  # per segment: the tensors it reads
    makes: tuple[tuple[int, ...], ...]  # per segment: the tensors it makes that leave it
    outputs: tuple[int, ...]  # the model's outputs
    # Per tensor, where it may be uploaded coded (runtime/codec.py): its coded bytes and the seconds to
    # code it both ways. None: every tensor travels raw.
    coded_nbytes: np.ndarray | None = None
    code_s: np.ndarray | None = None

    def with_codec(self, stats: dict, encode_scale: float = 1.0) -> TensorGraph:
        """This graph with the tensors in `stats` (name -> CodecStats) coded where it pays; the device's
        encoding time scaled by `encode_scale` (its speed against the machine that measured it)."""
        coded, seconds = self.nbytes.copy(), np.zeros(len(self.names))
        for name, st in stats.items():
            if name in self.index:
                coded[self.index[name]] = st.bytes
                seconds[self.index[name]] = st.encode_s * encode_scale + st.decode_s
        return replace(self, coded_nbytes=coded, code_s=seconds)

    def upload_nbytes(self, up_mbps: float) -> np.ndarray:
        """Per tensor, the bytes whose upload at `up_mbps` takes as long as sending it the faster way:
        raw, or coded plus the time to code it (expressed in bytes at that rate)."""
        if self.coded_nbytes is None:
            return self.nbytes
        return np.minimum(self.nbytes, self.coded_nbytes + self.code_s * up_mbps * 1e6 / 8)

    def pays_to_code(self, t: int, up_mbps: float) -> bool:
        return bool(self.upload_nbytes(up_mbps)[t] < self.nbytes[t])

    @classmethod
    def from_segments(cls, inputs, segments, outputs) -> TensorGraph:
        """From the model's input tensors, each segment's (inputs, outputs) and the model's outputs
        (TensorInfo-like objects with .name and .nbytes)."""
        index: dict[str, int] = {}
        nbytes, producer = [], []

        def add(t, made_by: int) -> None:
            if t.name not in index:
                index[t.name] = len(nbytes)
                nbytes.append(t.nbytes)
                producer.append(made_by)

        for t in inputs:
            add(t, -1)
        for i, (_, made) in enumerate(segments):
            for t in made:
                add(t, i)
        reads = tuple(tuple(index[t.name] for t in read) for read, _ in segments)
        makes = tuple(tuple(index[t.name] for t in made) for _, made in segments)
        return cls(len(segments), tuple(index), np.array(nbytes, dtype=np.float64), np.array(producer, dtype=np.int64),
                   reads, makes, tuple(index[t.name] for t in outputs))

    @classmethod
    def of_bundle(cls, bundle) -> TensorGraph:
        return cls.from_segments(bundle.inputs, [(s.inputs, s.outputs) for s in bundle.segments], bundle.outputs)

    @classmethod
    def chain(cls, boundary_bytes, output_bytes: float) -> TensorGraph:
        """A chain of len(boundary_bytes) segments: segment i reads tensor i (tensor 0 is the model
        input) and makes tensor i + 1; the last one is the model's output, of `output_bytes`."""
        n = len(boundary_bytes)
        nbytes = np.append(np.asarray(boundary_bytes, dtype=np.float64), float(output_bytes))
        return cls(n, tuple(f"t{i}" for i in range(n + 1)), nbytes, np.arange(-1, n, dtype=np.int64),
                   tuple((i,) for i in range(n)), tuple((i + 1,) for i in range(n)), (n,))

    @cached_property
    def consumers(self) -> list[list[int]]:
        """Per tensor, the segments that read it (the end, index n, for a model output)."""
        readers: list[list[int]] = [[] for _ in self.names]
        for i, read in enumerate(self.reads):
            for t in read:
                readers[t].append(i)
        for t in self.outputs:
            readers[t].append(self.n)
        return readers

    @cached_property
    def readers(self) -> np.ndarray:
        """(tensors, segments) 1 where the segment reads the tensor."""
        readers = np.zeros((len(self.names), self.n), dtype=np.int64)
        for i, read in enumerate(self.reads):
            readers[list(read), i] = 1
        return readers

    @cached_property
    def index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.names)}

    def stage(self, given, wanted) -> tuple[int, ...]:
        """The segments that make the tensors `wanted` from the tensors `given` (names), in order: what
        a server runs for one stage. StageError names a tensor neither given nor made, or a given
        tensor no segment of the stage reads."""
        given, index = set(given), self.index
        for name in [*given, *wanted]:
            if name not in index:
                raise StageError(f"no tensor {name!r} crosses between segments of this bundle")
        segments: set[int] = set()
        todo = [name for name in wanted if name not in given]
        while todo:
            t = index[todo.pop()]
            maker = int(self.producer[t])
            if maker < 0:
                raise StageError(f"the model input {self.names[t]!r} is needed but not given")
            if maker not in segments:
                segments.add(maker)
                todo += [self.names[r] for r in self.reads[maker] if self.names[r] not in given]
        unused = sorted(given - {self.names[t] for i in segments for t in self.reads[i]})
        if unused:
            raise StageError(f"given tensor(s) {', '.join(map(repr, unused))} are read by none of the segments "
                             f"that make {', '.join(map(repr, wanted))}")
        return tuple(sorted(segments))

    @property
    def is_chain(self) -> bool:
        """Whether segment i reads only what segment i - 1 made (or the model's inputs, for i = 0) and
        the model's outputs come from the last segment: the graphs a path over segments describes exactly."""
        return (all(all(self.producer[t] == i - 1 for t in read) for i, read in enumerate(self.reads))
                and all(self.producer[t] == self.n - 1 for t in self.outputs))


@dataclass(frozen=True)
class Stage:
    side: str
    segments: tuple[int, ...]
    uploads: tuple[int, ...] = ()  # a server stage: the tensors it is sent
    downloads: tuple[int, ...] = ()  # and the tensors its answer brings back


def plan_stages(graph: TensorGraph, sides) -> tuple[Stage, ...]:
    """The stages a schedule (`sides`: per segment, MOBILE or SERVER, or a mask true on the server) runs in."""
    server = [side == SERVER if isinstance(side, str) else bool(side) for side in sides]
    ready = [bool(p < 0) for p in graph.producer]
    done = [False] * graph.n
    stage_of = [-1] * graph.n
    groups: list[tuple[bool, list[int]]] = []
    on_server, left = False, graph.n
    while left:
        group = []
        for i in range(graph.n):
            if not done[i] and server[i] == on_server and all(ready[t] for t in graph.reads[i]):
                done[i] = True
                group.append(i)
                for t in graph.makes[i]:
                    ready[t] = True
                stage_of[i] = len(groups)
        if group:
            groups.append((on_server, group))
            left -= len(group)
        on_server = not on_server
    consumers = graph.consumers
    stages = []
    for number, (is_server, group) in enumerate(groups):
        if not is_server:
            stages.append(Stage(MOBILE, tuple(group)))
            continue
        members = set(group)
        uploads = sorted({t for i in group for t in graph.reads[i] if graph.producer[t] not in members})
        downloads = sorted({t for i in group for t in graph.makes[i]
                            if any(c == graph.n or stage_of[c] != number for c in consumers[t])})
        stages.append(Stage(SERVER, tuple(group), tuple(uploads), tuple(downloads)))
    return tuple(stages)


@dataclass(frozen=True)
class Schedule:
    """The side of every segment, and the stages it runs in."""

    sides: tuple[str, ...]
    stages: tuple[Stage, ...]

    @classmethod
    def of(cls, graph: TensorGraph, server_mask) -> Schedule:
        """From a per-segment mask, true where the segment runs on the server."""
        sides = tuple(SERVER if s else MOBILE for s in server_mask)
        return cls(sides, plan_stages(graph, sides))

    @classmethod
    def cut(cls, graph: TensorGraph, k: int) -> Schedule:
        """Neurosurgeon's cut k: segments 0..k-1 on the mobile side, the rest on the server."""
        return cls.of(graph, np.arange(graph.n) >= k)

    @property
    def server_mask(self) -> np.ndarray:
        return np.array([side == SERVER for side in self.sides], dtype=bool)

    @property
    def prefix_cut(self) -> int | None:
        """k if this is cut k (a prefix on the mobile side, the rest on the server), else None."""
        mask = self.server_mask
        k = int(np.argmax(mask)) if mask.any() else len(mask)
        return k if mask[k:].all() else None

    @property
    def server_stages(self) -> int:
        return sum(stage.side == SERVER for stage in self.stages)

    @property
    def transfers(self) -> int:
        """How many times tensors change sides: an upload and an answer per server stage."""
        return sum(bool(stage.uploads) + bool(stage.downloads) for stage in self.stages if stage.side == SERVER)

    @classmethod
    def parse(cls, graph: TensorGraph, text: str) -> Schedule:
        """A schedule as `describe` writes it ("m0-4 s5-9 m10-11"), or one letter per segment ("mmsm")."""
        words = text.split()
        mask = np.zeros(graph.n, dtype=bool)
        seen = np.zeros(graph.n, dtype=bool)
        try:
            if len(words) == 1 and len(text) == graph.n and set(text) <= {"m", "s"}:
                mask[:] = [letter == "s" for letter in text]
                seen[:] = True
            else:
                for word in words:
                    side = word[0]
                    for span in word[1:].split(","):
                        first, _, last = span.partition("-")
                        segments = range(int(first), int(last or first) + 1)
                        if side not in "ms" or not segments or segments[-1] >= graph.n:
                            raise ValueError(word)
                        mask[segments.start:segments.stop] = side == "s"
                        seen[segments.start:segments.stop] = True
        except ValueError:
            raise StageError(f"schedule {text!r}: write it as stages (m0-4 s5-9 m10-11) or one letter per "
                             f"segment (m or s), for segments 0..{graph.n - 1}") from None
        if not seen.all():
            raise StageError(f"schedule {text!r} gives no side to segment(s) {np.flatnonzero(~seen).tolist()}")
        return cls.of(graph, mask)

    def describe(self) -> str:
        """e.g. "m0-4 s5-9 m10-11" (or "m0,2-3 s1" where a stage's segments are not consecutive): each
        stage's side and segments."""
        def spans(segments):
            runs, start = [], segments[0]
            for a, b in zip(segments, [*segments[1:], None]):
                if b != a + 1:
                    runs.append(f"{start}-{a}" if a > start else f"{a}")
                    start = b
            return ",".join(runs)
        return " ".join(f"{stage.side[0]}{spans(stage.segments)}" for stage in self.stages)


def _transfers(graph: TensorGraph, stages) -> tuple[np.ndarray, float, float]:
    """(times each tensor is uploaded, bytes down, server stages) of a schedule's stages."""
    up, down, trips = np.zeros(len(graph.names)), 0.0, 0.0
    for stage in stages:
        if stage.side == SERVER:
            up[list(stage.uploads)] += 1
            down += float(graph.nbytes[list(stage.downloads)].sum())
            trips += 1
    return up, down, trips


@dataclass(frozen=True)
class ScheduleTerms:
    """Per schedule of a batch: what its cost is made of, independent of the conditions. With the
    per-segment times x (mobile), y (server) and powers p, and a request's conditions:

        latency  = mobile_mask @ x + slowdown * server_mask @ y + up_bytes * 8 / B_up
                   + down_bytes * 8 / B_down + round_trips * (RTT + wait)
        energy   = mobile_mask @ (x * p) + up_bytes * 8 / B_up * P_up + down_bytes * 8 / B_down * P_down
                   + (slowdown * server_mask @ y + round_trips * (RTT + wait)) * P_wait
        server_s = slowdown * server_mask @ y

    with up_bytes = uploads @ (each tensor's bytes as sent at B_up: TensorGraph.upload_nbytes; the
    time to code a tensor counts as upload time, at the radio's power).
    """

    server_masks: np.ndarray  # (schedules, segments) bool
    uploads: np.ndarray  # (schedules, tensors): how many times each tensor is uploaded
    down_bytes: np.ndarray
    round_trips: np.ndarray

    @classmethod
    def of(cls, graph: TensorGraph, server_masks) -> ScheduleTerms:
        masks = np.asarray(server_masks, dtype=bool).reshape(-1, graph.n)
        up, down, trips = np.zeros((len(masks), len(graph.names))), np.zeros(len(masks)), np.zeros(len(masks))
        for row, mask in enumerate(masks):
            up[row], down[row], trips[row] = _transfers(graph, plan_stages(graph, mask))
        return cls(masks, up, down, trips)

    @classmethod
    def of_schedule(cls, graph: TensorGraph, schedule: Schedule) -> ScheduleTerms:
        """`of` for one schedule whose stages are known."""
        up, down, trips = _transfers(graph, schedule.stages)
        return cls(schedule.server_mask[None, :], up[None, :], np.array([down]), np.array([trips]))

    @classmethod
    def placements(cls, graph: TensorGraph, server_masks) -> ScheduleTerms:
        """`of` for schedules whose mobile part is closed under "is read by" (no server segment feeds
        a mobile one): one mobile stage, then at most one server stage. Vectorised over the batch."""
        masks = np.asarray(server_masks, dtype=bool).reshape(-1, graph.n)
        read_on_server = (masks.astype(np.int64) @ graph.readers.T) > 0  # (schedules, tensors)
        made_on_server = np.zeros_like(read_on_server)
        made = graph.producer >= 0
        made_on_server[:, made] = masks[:, graph.producer[made]]
        uploads = (read_on_server & ~made_on_server).astype(np.float64)
        outputs = list(graph.outputs)
        down = made_on_server[:, outputs] @ graph.nbytes[outputs]
        return cls(masks, uploads, down, masks.any(axis=1).astype(np.float64))

    def costs(self, mobile_s, server_s, mobile_power_w, c, upload_nbytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(latency, mobile energy, server time) of every schedule under conditions `c`, each tensor
        uploaded as `upload_nbytes` bytes (TensorGraph.upload_nbytes at c's rate)."""
        x = np.asarray(mobile_s, dtype=np.float64)
        y = np.asarray(server_s, dtype=np.float64) * c.server_slowdown
        mobile = ~self.server_masks
        up_s, down_s = self.uploads @ upload_nbytes * 8 / (c.up_mbps * 1e6), self.down_bytes * 8 / (c.down_mbps * 1e6)
        server = self.server_masks @ y
        latency = mobile @ x + server + up_s + down_s + self.round_trips * (c.request_s + c.rtt_s + c.server_wait_s)
        waiting = server + self.round_trips * (c.rtt_s + c.server_wait_s)
        power = np.asarray(mobile_power_w, dtype=np.float64)
        energy = mobile @ (x * power) + up_s * c.upload_power_w + down_s * c.download_power_w + waiting * c.wait_power_w
        if c.request_s:  # building each server stage's request: device work at its mean power
            energy += self.round_trips * (c.request_s * float(power.sum()) / power.size)
        return latency, energy, server
