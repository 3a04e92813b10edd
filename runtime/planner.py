"""Pick the schedule for a request: which side runs each segment (runtime/schedule.py), the one that
minimises predicted end-to-end latency or mobile energy, optionally under budgets, from per-segment
cost estimates and the current network and server conditions. Three planners, one interface
(`choose(conditions, objective, budgets) -> Decision`), picked per bundle or per request:

- `prefix` (Neurosurgeon): the best cut k, segments 0..k-1 on the mobile side. Exact over cuts, on
  any graph, with any budgets: every cut is evaluated.
- `shortest-path` (Eshratifar & Pedram): any side for any segment, as many transfers as pay, found
  as a shortest path over (segment, side) states; with budgets, an exact resource-constrained
  shortest path (labels pruned by dominance and by the budgets). Exact on chains (each segment
  reads only what the one before made); on DAGs a heuristic, since a tensor that skips segments
  is not on the path's edges: the schedule it picks is then priced exactly before it is reported.
- `min-cut` (DADS): a placement of a DAG whose mobile part is closed under "is read by" (one
  upload, no way back), found as a minimum s-t cut (max flow), exact over those placements; with
  budgets, every such placement is evaluated (exact), up to MAX_PLACEMENTS of them.

With no schedule meeting the budgets, the decision says which budgets cannot be met and falls back
to the planner's best schedule without budgets. Without a server, everything runs on the mobile
side. The radio power model is P = alpha * throughput_Mbps + beta (Huang et al., MobiSys 2012); while
the mobile side waits for a server stage (round trip, queue, compute) its radio stays active at beta.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from .errors import NeurosurgeonError
from .schedule import MOBILE, Schedule, ScheduleTerms, TensorGraph

__all__ = ["MAX_PLACEMENTS", "NETWORKS", "OBJECTIVES", "PLANNERS", "Budgets", "Conditions", "Decision",
           "MinCutPlanner", "Network", "Planner", "PrefixPlanner", "SegmentCosts", "ShortestPathPlanner",
           "get_network", "make_planner"]


@dataclass(frozen=True)
class Network:
    """A network's nominal link and its radio power model (mW = alpha * Mbps + beta)."""

    name: str
    up_mbps: float
    down_mbps: float
    rtt_s: float
    alpha_up_mw: float
    alpha_down_mw: float
    beta_mw: float

    def upload_power_w(self, up_mbps: float) -> float:
        return (self.alpha_up_mw * up_mbps + self.beta_mw) / 1000

    def download_power_w(self, down_mbps: float) -> float:
        return (self.alpha_down_mw * down_mbps + self.beta_mw) / 1000


# Bandwidths: OpenSignal figures used by JointDNN and DADS; radio power: Huang et al. (MobiSys 2012),
# as digested in PAPER-NOTES.md. The papers give no RTT: these are typical round trips, an assumption.
NETWORKS = {
    "wifi": Network("wifi", 18.88, 54.97, 0.010, 283.17, 137.01, 132.86),
    "lte": Network("lte", 5.85, 13.76, 0.050, 438.39, 51.97, 1288.04),
    "3g": Network("3g", 1.1, 2.0275, 0.150, 868.98, 122.12, 817.88),
}

OBJECTIVES = ("latency", "energy")


def get_network(name: str) -> Network:
    try:
        return NETWORKS[name]
    except KeyError:
        raise NeurosurgeonError(f"unknown network {name!r}; valid: {', '.join(NETWORKS)}") from None


@dataclass(frozen=True)
class SegmentCosts:
    """What the planner needs to know about each segment, filled by a cost provider."""

    mobile_s: np.ndarray  # per segment: predicted time on the mobile side
    server_s: np.ndarray  # per segment: predicted time on an idle server
    mobile_power_w: np.ndarray  # per segment: mobile power while computing it
    source: str = "unknown"


@dataclass(frozen=True)
class Conditions:
    """The world as the estimators see it when a request arrives."""

    up_mbps: float
    down_mbps: float
    rtt_s: float
    server_wait_s: float = 0.0  # queueing ahead of each request the server gets
    server_slowdown: float = 1.0  # server compute time multiplier under load
    server_available: bool = True
    upload_power_w: float = 0.0
    download_power_w: float = 0.0
    wait_power_w: float = 0.0  # radio power while the mobile side waits for the server (active, no data: beta)
    request_s: float = 0.0  # this side's own work per server stage outside its segments: building the request


@dataclass(frozen=True)
class Budgets:
    """Ceilings a schedule must stay under (None: no ceiling): end-to-end latency (QoS), mobile energy
    (battery), time on the server (limited cloud resources)."""

    max_latency_s: float | None = None
    max_energy_j: float | None = None
    max_server_s: float | None = None

    def limits(self) -> np.ndarray:
        """(latency, energy, server) ceilings, inf where there is none."""
        return np.array([math.inf if v is None else v for v in (self.max_latency_s, self.max_energy_j,
                                                                 self.max_server_s)])

    def __bool__(self) -> bool:
        return bool(np.isfinite(self.limits()).any())


BUDGET_NAMES = ("latency", "energy", "server time")


@dataclass(frozen=True)
class Decision:
    schedule: Schedule
    latency_s: float  # predicted
    energy_j: float  # predicted mobile energy
    server_s: float  # predicted time on the server
    objective: str
    planner: str
    infeasible: tuple[str, ...] = ()  # budgets no schedule meets: then the best schedule without budgets

    @property
    def cut(self) -> int | None:
        return self.schedule.prefix_cut


class Planner(ABC):
    """Chooses a schedule per request from per-segment costs (`update_mobile_times` as the mobile side
    learns its own) and the conditions. A new planner is a new subclass listed in PLANNERS."""

    name = ""

    def __init__(self, graph: TensorGraph, costs: SegmentCosts):
        if not (len(costs.mobile_s) == len(costs.server_s) == graph.n):
            raise ValueError(f"costs describe {len(costs.mobile_s)} segments, the graph has {graph.n}")
        self.graph, self.costs = graph, costs
        self.mobile_s = np.asarray(costs.mobile_s, dtype=np.float64).copy()
        self.server_s = np.asarray(costs.server_s, dtype=np.float64)
        self.power_w = np.broadcast_to(np.asarray(costs.mobile_power_w, dtype=np.float64), (graph.n,))
        self._schedules: dict[bytes, tuple[Schedule, ScheduleTerms]] = {}
        self._mobile_only = self.schedule(np.zeros(graph.n, dtype=bool))

    def update_mobile_times(self, mobile_s) -> None:
        """New per-segment mobile times (e.g. as the mobile side measured them)."""
        self.mobile_s = np.asarray(mobile_s, dtype=np.float64).copy()

    def update_server_times(self, server_s) -> None:
        """New per-segment server times (as the server measures them itself, under its current load)."""
        self.server_s = np.asarray(server_s, dtype=np.float64).copy()

    def schedule(self, server_mask) -> Schedule:
        """The schedule of a server mask, with its stages and cost terms (kept: planners come back to
        the same few schedules request after request)."""
        key = np.asarray(server_mask, dtype=bool).tobytes()
        found = self._schedules.get(key)
        if found is None:
            if len(self._schedules) > 4096:
                self._schedules.clear()
            schedule = Schedule.of(self.graph, server_mask)
            found = self._schedules[key] = (schedule, ScheduleTerms.of_schedule(self.graph, schedule))
        return found[0]

    def evaluate(self, c: Conditions, schedule: Schedule) -> tuple[float, float, float]:
        """(latency, energy, server time) of one schedule, priced exactly."""
        self.schedule(schedule.server_mask)
        terms = self._schedules[schedule.server_mask.tobytes()][1]
        latency, energy, server = terms.costs(self.mobile_s, self.server_s, self.power_w, c,
                                              self.graph.upload_nbytes(c.up_mbps))
        return float(latency[0]), float(energy[0]), float(server[0])

    def stage_times(self, c: Conditions, schedule: Schedule) -> list[float]:
        """Predicted seconds of each stage of a schedule (they add up to its latency): a server stage's
        RTT, queue, upload, compute and download."""
        times = []
        for stage in schedule.stages:
            segments = list(stage.segments)
            if stage.side == MOBILE:
                times.append(float(self.mobile_s[segments].sum()))
                continue
            up = float(self.graph.upload_nbytes(c.up_mbps)[list(stage.uploads)].sum()) * 8 / (c.up_mbps * 1e6)
            down = float(self.graph.nbytes[list(stage.downloads)].sum()) * 8 / (c.down_mbps * 1e6)
            times.append(c.request_s + c.rtt_s + c.server_wait_s + up + c.server_slowdown * float(self.server_s[segments].sum())
                         + down)
        return times

    def choose(self, c: Conditions, objective: str = "latency", budgets: Budgets = Budgets()) -> Decision:
        if objective not in OBJECTIVES:
            raise NeurosurgeonError(f"unknown objective {objective!r}; valid: {', '.join(OBJECTIVES)}")
        if not c.server_available:
            schedule = self._mobile_only
        else:
            schedule, infeasible = self._choose(c, objective, budgets)
            if infeasible:
                return self._decision(c, self._choose(c, objective, Budgets())[0], objective, infeasible)
        return self._decision(c, schedule, objective, ())

    def _decision(self, c: Conditions, schedule: Schedule, objective: str, infeasible: tuple[str, ...]) -> Decision:
        return Decision(schedule, *self.evaluate(c, schedule), objective, self.name, infeasible)

    @abstractmethod
    def _choose(self, c: Conditions, objective: str, budgets: Budgets) -> tuple[Schedule, tuple[str, ...]]:
        """The best schedule under the budgets, or (any schedule, the budgets none meets)."""


class _CandidatePlanner(Planner):
    """Planners over a fixed set of schedules made of one mobile stage then one server stage: each
    request evaluates all of them with a few matrix-vector products (ScheduleTerms), and any budgets
    are met exactly by masking."""

    def _candidates(self, masks: np.ndarray) -> None:
        self.terms = ScheduleTerms.placements(self.graph, masks)

    def predict(self, c: Conditions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(latency, energy, server time) of every candidate."""
        return self.terms.costs(self.mobile_s, self.server_s, self.power_w, c, self.graph.upload_nbytes(c.up_mbps))

    def _argmin(self, c: Conditions, objective: str, budgets: Budgets) -> tuple[int, tuple[str, ...]]:
        costs = self.predict(c)
        score = costs[OBJECTIVES.index(objective)]
        if budgets:
            within = np.stack(costs) <= budgets.limits()[:, None] * (1 + 1e-12)
            feasible = within.all(axis=0)
            if not feasible.any():
                return int(np.argmin(score)), tuple(n for n, ok in zip(BUDGET_NAMES, within.any(axis=1)) if not ok) \
                    or BUDGET_NAMES_TOGETHER
            score = np.where(feasible, score, np.inf)
        return int(np.argmin(score)), ()

    def _choose(self, c, objective, budgets):
        best, infeasible = self._argmin(c, objective, budgets)
        return self.schedule(self.terms.server_masks[best]), infeasible


BUDGET_NAMES_TOGETHER = ("the budgets together",)


class PrefixPlanner(_CandidatePlanner):
    """Neurosurgeon: the best of the n + 1 cuts."""

    name = "prefix"

    def __init__(self, graph: TensorGraph, costs: SegmentCosts):
        super().__init__(graph, costs)
        self._candidates(np.arange(graph.n)[None, :] >= np.arange(graph.n + 1)[:, None])


MAX_PLACEMENTS = 20_000  # min-cut with budgets evaluates every placement, up to this many


class MinCutPlanner(_CandidatePlanner):
    """DADS: the mobile part closed under "is read by" (every segment a mobile segment reads from runs
    on the mobile side too), so one upload and no way back; the best such placement is a minimum s-t
    cut. The flow network, with e the mobile side and c the server:

        e -> v  the server's cost of v (its compute, and downloading the model outputs it makes)
        v -> c  the mobile side's cost of v
        producer(t) -> aux(t) -> each reader of t   the cost of uploading t, paid once (aux -> reader: inf)
        reader -> producer   inf: no server segment feeds a mobile one
        e -> aux(t) for a model input t   its upload cost (model inputs are on the mobile side)

    The cut's capacity is the placement's cost but for one RTT + queue wait, paid once whenever any
    segment runs on the server: the min cut is compared with running everything on the mobile side,
    which makes the answer exact. Where a DAG has at most MAX_PLACEMENTS such placements (the zoo's
    have 22 to 2,728), evaluating them all is faster than a max flow in Python and finds the same
    optimum (the tests check both against networkx's minimum cut): that is how it decides, with or
    without budgets. Beyond that it runs the max flow, and budgets fall back to the prefix planner's
    answer, which the decision says."""

    name = "min-cut"

    def __init__(self, graph: TensorGraph, costs: SegmentCosts, method: str = "auto"):
        super().__init__(graph, costs)
        self._flow = _FlowNetwork(graph)
        masks = _placements(graph, MAX_PLACEMENTS)
        self.enumerable = masks is not None
        self.method = ("placements" if self.enumerable else "flow") if method == "auto" else method
        self._candidates(masks if masks is not None else np.arange(graph.n)[None, :] >= np.arange(graph.n + 1)[:, None])

    def _choose(self, c, objective, budgets):
        if budgets or self.method == "placements":
            return super()._choose(c, objective, budgets)  # exact over every placement (or cuts, see above)
        server = self._flow.server_side(self, c, objective)
        mobile_only = np.zeros(self.graph.n, dtype=bool)
        candidates = ScheduleTerms.placements(self.graph, np.stack([server, mobile_only]))
        score = candidates.costs(self.mobile_s, self.server_s, self.power_w, c,
                                 self.graph.upload_nbytes(c.up_mbps))[OBJECTIVES.index(objective)]
        return self.schedule(candidates.server_masks[int(np.argmin(score))]), ()


class ShortestPathPlanner(Planner):
    """Eshratifar & Pedram: states (segment i, side), edges i -> i + 1 carrying the next segment's
    compute on its side (on the server, with the model outputs it makes downloaded), plus on a side
    switch at boundary k the transfer of what crosses it (up: RTT + queue + upload; down: download).
    Unconstrained: one pass of dynamic programming. With budgets: labels (latency, energy, server
    time) per state, extended along every edge, dropped when over a budget or dominated, so the best
    feasible path is found exactly."""

    name = "shortest-path"

    def __init__(self, graph: TensorGraph, costs: SegmentCosts):
        super().__init__(graph, costs)
        consumers = graph.consumers
        last_read = np.array([max((r for r in readers if r < graph.n), default=-1) for readers in consumers])
        # bytes crossing boundary k (made before k, read at or after k), and the model outputs each
        # segment makes (a server stage brings them back in its answer)
        self.crossing = np.array([(graph.producer < k) & (last_read >= k) for k in range(graph.n)], dtype=np.float64)
        self.cross_bytes = self.crossing @ graph.nbytes
        self.output_bytes = np.zeros(graph.n)
        for t in graph.outputs:
            if graph.producer[t] >= 0:
                self.output_bytes[graph.producer[t]] += graph.nbytes[t]

    def _edges(self, c: Conditions) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per segment k, the (latency, energy, server) cost vectors of its four incoming edges
        [m->m, s->m, m->s, s->s] (k = 0: from the mobile start), and of the two exits [m, s]."""
        n = self.graph.n
        x, y = self.mobile_s, self.server_s * c.server_slowdown
        up = self.crossing @ self.graph.upload_nbytes(c.up_mbps) * 8 / (c.up_mbps * 1e6)
        down = self.cross_bytes * 8 / (c.down_mbps * 1e6)
        out = self.output_bytes * 8 / (c.down_mbps * 1e6)  # a server segment's model outputs come back
        trip = c.rtt_s + c.server_wait_s
        latency = np.stack([x, down + x, c.request_s + trip + up + y + out, y + out], axis=1)
        wait = c.wait_power_w
        energy = np.stack([x * self.power_w, down * c.download_power_w + x * self.power_w,
                           c.request_s * float(self.power_w.sum()) / self.graph.n + up * c.upload_power_w + out * c.download_power_w + (trip + y) * wait,
                           out * c.download_power_w + y * wait], axis=1)
        server = np.stack([np.zeros(n), np.zeros(n), y, y], axis=1)
        exits = np.zeros((2, 3))  # the end is on the mobile side; what the server made is already back
        return latency, energy, server, exits

    def _choose(self, c, objective, budgets):
        latency, energy, server, exits = self._edges(c)
        weights = np.stack([latency, energy, server], axis=2)  # (segments, 4 edges, 3 resources)
        o = OBJECTIVES.index(objective)
        if not budgets:
            return self.schedule(self._shortest(weights[:, :, o], exits[:, o])), ()
        limits = budgets.limits()
        sides = self._labels(weights, exits, limits, o)
        if sides is not None:
            return self.schedule(sides), ()
        lowest = [self._cost(self._shortest(weights[:, :, r], exits[:, r]), weights[:, :, r], exits[:, r])
                  for r in range(3)]
        return self._mobile_only, tuple(n for n, low, limit in zip(BUDGET_NAMES, lowest, limits) if low > limit) \
            or BUDGET_NAMES_TOGETHER

    def _shortest(self, w: np.ndarray, exits: np.ndarray) -> np.ndarray:
        """The server mask of the cheapest path for edge weights w (segments x [mm, sm, ms, ss])."""
        n = self.graph.n
        rows = w.tolist()
        m, s = rows[0][0], rows[0][2]  # arrive at (0, m) / (0, s) from the mobile start
        came = [(0, 0)] * n
        for k in range(1, n):
            mm, sm, ms, ss = rows[k]
            to_m, from_s_m = (m + mm, False) if m + mm <= s + sm else (s + sm, True)
            to_s, from_s_s = (m + ms, False) if m + ms <= s + ss else (s + ss, True)
            came[k] = (int(from_s_m), int(from_s_s))
            m, s = to_m, to_s
        side = int(s + exits[1] < m + exits[0])
        mask = np.zeros(n, dtype=bool)
        for k in range(n - 1, -1, -1):
            mask[k] = bool(side)
            side = came[k][side]
        return mask

    @staticmethod
    def _cost(mask: np.ndarray, w: np.ndarray, exits: np.ndarray) -> float:
        prev = np.concatenate(([0], mask[:-1].astype(int)))
        return float(w[np.arange(len(mask)), 2 * mask + prev].sum() + exits[int(mask[-1])])

    def _labels(self, weights: np.ndarray, exits: np.ndarray, limits: np.ndarray, o: int) -> np.ndarray | None:
        """The exact budgeted path: per state a Pareto set of (latency, energy, server) labels. The
        budgets prune so hard that states keep a label or two: plain Python beats numpy here."""
        n = self.graph.n
        limit = [float(v) * (1 + 1e-12) for v in limits]
        watched = [o] + [r for r in range(3) if np.isfinite(limits[r]) and r != o]
        w = weights.tolist()  # w[k][edge][resource], edges [mm, sm, ms, ss]
        # per segment and side: labels (values, parent side, index of the parent's label)
        history: list[tuple[list, list]] = [([(tuple(w[0][0]), 0, 0)], [(tuple(w[0][2]), 0, 0)])]
        for k in range(1, n):
            previous = history[-1]
            step = []
            for edges in ((0, 1), (2, 3)):  # into m: from m, from s; into s: from m, from s
                found = [(tuple(a + b for a, b in zip(values, w[k][edge])), side, i)
                         for side, edge in enumerate(edges) for i, (values, _, _) in enumerate(previous[side])]
                step.append(_pareto(found, limit, watched))
            history.append(tuple(step))
        best = None
        for side in (0, 1):
            for i, (values, _, _) in enumerate(history[-1][side]):
                values = [v + e for v, e in zip(values, exits[side])]
                if all(v <= lim for v, lim in zip(values, limit)) and (best is None or values[o] < best[0]):
                    best = (values[o], side, i)
        if best is None:
            return None
        _, side, i = best
        mask = np.zeros(n, dtype=bool)
        for k in range(n - 1, -1, -1):
            mask[k] = bool(side)
            _, side, i = history[k][side][i]
        return mask


def _pareto(labels: list, limit: list[float], watched: list[int]) -> list:
    """The labels within the limits that no other label beats or equals in every watched resource."""
    labels = sorted((label for label in labels if all(v <= lim for v, lim in zip(label[0], limit))),
                    key=lambda label: [label[0][r] for r in watched])
    kept: list = []
    for label in labels:  # sorted: a label can only be dominated by one before it
        values = label[0]
        if not any(all(other[0][r] <= values[r] for r in watched) for other in kept):
            kept.append(label)
    return kept


def _placements(graph: TensorGraph, limit: int) -> np.ndarray | None:
    """Every server mask whose mobile part is closed under "is read by" (a segment runs on the mobile
    side only if every segment it reads from does), or None if there are more than `limit`."""
    makers = [sorted({int(graph.producer[t]) for t in read if graph.producer[t] >= 0}) for read in graph.reads]
    masks = np.zeros((1, 0), dtype=bool)
    for i in range(graph.n):
        forced = masks[:, makers[i]].any(axis=1) if makers[i] else np.zeros(len(masks), dtype=bool)
        free = masks[~forced]
        masks = np.vstack([np.column_stack([masks, np.ones(len(masks), dtype=bool)]),
                           np.column_stack([free, np.zeros(len(free), dtype=bool)])])
        if len(masks) > limit:
            return None
    return masks


class _FlowNetwork:
    """MinCutPlanner's flow network: its structure made once per bundle, its capacities per request."""

    def __init__(self, graph: TensorGraph):
        n = graph.n
        self.n = n
        consumers = graph.consumers
        self.source, self.sink = n, n + 1
        self.tensors = [t for t in range(len(graph.names)) if any(r < n for r in consumers[t])]
        aux = {t: n + 2 + j for j, t in enumerate(self.tensors)}
        self.nodes = n + 2 + len(self.tensors)
        edges = []  # (from, to, kind, index): kind picks the capacity per request
        for v in range(n):
            edges += [(self.source, v, "server", v), (v, self.sink, "mobile", v)]
        for t in self.tensors:
            maker = int(graph.producer[t])
            edges.append((self.source if maker < 0 else maker, aux[t], "upload", t))
            for reader in consumers[t]:
                if reader < n:
                    edges.append((aux[t], reader, "inf", 0))
                    if maker >= 0:
                        edges.append((reader, maker, "inf", 0))
        self.edges = edges
        # the residual network's structure, made once: per node the arcs leaving it; arc e ^ 1 is e's reverse
        self.head: list[list[int]] = [[] for _ in range(self.nodes)]
        self.to: list[int] = []
        for u, v, _, _ in edges:
            self.head[u].append(len(self.to))
            self.to.append(v)
            self.head[v].append(len(self.to))
            self.to.append(u)
        self.output_bytes = np.zeros(n)
        for t in graph.outputs:
            if graph.producer[t] >= 0:
                self.output_bytes[graph.producer[t]] += graph.nbytes[t]
        self.graph = graph

    def server_side(self, planner: Planner, c: Conditions, objective: str) -> np.ndarray:
        """The server mask of the minimum cut for the objective."""
        up_s = self.graph.upload_nbytes(c.up_mbps) * 8 / (c.up_mbps * 1e6)
        down_s = self.output_bytes * 8 / (c.down_mbps * 1e6)
        if objective == "latency":
            server = planner.server_s * c.server_slowdown + down_s
            mobile, upload = planner.mobile_s, up_s
        else:
            server = down_s * c.download_power_w + planner.server_s * c.server_slowdown * c.wait_power_w
            mobile, upload = planner.mobile_s * planner.power_w, up_s * c.upload_power_w
        capacity = {"server": server.tolist(), "mobile": mobile.tolist(), "upload": upload.tolist()}
        cap = [0.0] * len(self.to)
        cap[::2] = [math.inf if kind == "inf" else capacity[kind][i] for _, _, kind, i in self.edges]
        reachable = _max_flow_source_side(self.nodes, self.head, self.to, cap, self.source, self.sink)
        return ~reachable[: self.n]


def _max_flow_source_side(nodes: int, head: list[list[int]], to: list[int], cap: list[float], source: int,
                          sink: int) -> np.ndarray:
    """Dinic's max flow over arcs `to` with capacities `cap` (changed in place; arc e ^ 1 is the reverse
    of e); returns which nodes the source still reaches in the residual network (the source side of a
    minimum cut)."""
    eps = 1e-15
    while True:
        level = [-1] * nodes
        level[source] = 0
        queue = [source]
        for u in queue:
            for e in head[u]:
                if cap[e] > eps and level[to[e]] < 0:
                    level[to[e]] = level[u] + 1
                    queue.append(to[e])
        if level[sink] < 0:
            break
        cursor = [0] * nodes

        def push(u: int, flow: float) -> float:
            if u == sink:
                return flow
            edges_u = head[u]
            while cursor[u] < len(edges_u):
                e = edges_u[cursor[u]]
                v = to[e]
                if cap[e] > eps and level[v] == level[u] + 1:
                    sent = push(v, min(flow, cap[e]))
                    if sent > eps:
                        cap[e] -= sent
                        cap[e ^ 1] += sent
                        return sent
                cursor[u] += 1
            return 0.0

        while push(source, math.inf) > eps:
            pass
    seen = np.zeros(nodes, dtype=bool)
    seen[source] = True
    queue = [source]
    for u in queue:
        for e in head[u]:
            if cap[e] > eps and not seen[to[e]]:
                seen[to[e]] = True
                queue.append(to[e])
    return seen


PLANNERS: dict[str, type[Planner]] = {p.name: p for p in (PrefixPlanner, ShortestPathPlanner, MinCutPlanner)}


def make_planner(name: str, graph: TensorGraph, costs: SegmentCosts) -> Planner:
    try:
        return PLANNERS[name](graph, costs)
    except KeyError:
        raise NeurosurgeonError(f"unknown planner {name!r}; valid: {', '.join(PLANNERS)}") from None
