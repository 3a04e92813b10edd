"""Schedules and their planners against independent answers: brute force over every schedule on small
graphs, scipy's MILP on larger ones, networkx's minimum cut; with and without each budget."""

import itertools

import networkx as nx
import numpy as np
import pytest
from scipy.optimize import Bounds, LinearConstraint, milp

from neurosurgeon.runtime.planner import (Budgets, Conditions, MinCutPlanner, PrefixPlanner, SegmentCosts,
                                          ShortestPathPlanner, _placements)
from neurosurgeon.runtime.schedule import Schedule, ScheduleTerms, TensorGraph, plan_stages

OBJECTIVES = ("latency", "energy")
REL = 1e-9


def log_uniform(rng, low, high, size=None):
    return np.exp(rng.uniform(np.log(low), np.log(high), size))


def conditions(rng) -> Conditions:
    up = rng.uniform(0.5, 50)
    return Conditions(up, up * rng.uniform(1.5, 3), log_uniform(rng, 0.001, 0.1), server_wait_s=rng.uniform(0, 0.01),
                      server_slowdown=rng.uniform(1, 2), upload_power_w=rng.uniform(0.1, 3),
                      download_power_w=rng.uniform(0.1, 2), wait_power_w=rng.uniform(0, 1.5),
                      request_s=rng.uniform(0, 0.002))


def segment_costs(rng, n) -> SegmentCosts:
    """Per segment the mobile side is 50x faster to 50x slower than the server (a mobile GPU fast at
    convolutions and slow at large fully connected layers, a busy server): so that the best schedule
    has several server stages as often as one or none."""
    server = rng.uniform(1e-3, 2e-2, n)
    return SegmentCosts(server * log_uniform(rng, 0.02, 50, n), server, rng.uniform(0.5, 4, n))


def tensor_bytes(rng, n):
    return log_uniform(rng, 1e1, 1e6, n)


def random_dag(rng, n) -> TensorGraph:
    """n segments; segment i reads one or two tensors made before it (or the model input) and makes one
    or two; the model's outputs are the last segment's tensors and sometimes an earlier one."""
    class T:
        def __init__(self, name, nbytes):
            self.name, self.nbytes = name, nbytes

    model_input = T("x", float(log_uniform(rng, 1e3, 1e6)))
    made, segments = [model_input], []
    for i in range(n):
        k = min(len(made), int(rng.integers(1, 3)))
        read = list(rng.choice(len(made), size=k, replace=False)) if i else [0]
        if i and len(made) > 1 and len(made) - 1 not in read:
            read[0] = len(made) - 1  # stay connected: read the latest tensor
        outs = [T(f"t{i}_{j}", float(log_uniform(rng, 1e1, 1e6))) for j in range(int(rng.integers(1, 3)))]
        segments.append(([made[r] for r in read], outs))
        made += outs
    outputs = list(segments[-1][1])
    if n > 3 and rng.uniform() < 0.5:
        outputs.append(segments[n // 2][1][0])  # an auxiliary output, as Inception has
    return TensorGraph.from_segments([model_input], segments, outputs)


def brute(graph, costs, c, masks):
    return ScheduleTerms.of(graph, masks).costs(costs.mobile_s, costs.server_s, costs.mobile_power_w, c,
                                                graph.upload_nbytes(c.up_mbps))


def best(values, objective, budgets: Budgets):
    score = values[OBJECTIVES.index(objective)]
    ok = (np.stack(values) <= budgets.limits()[:, None] * (1 + 1e-12)).all(axis=0)
    return score[ok].min() if ok.any() else None


def budget_cases(values, rng):
    """No budget, each budget alone, and two together, set between the best and a typical schedule."""
    latency, energy, server = values
    pick = lambda v: float(np.quantile(v, rng.uniform(0.05, 0.6)))  # noqa: E731
    return [Budgets(), Budgets(max_energy_j=pick(energy)), Budgets(max_latency_s=pick(latency)),
            Budgets(max_server_s=pick(server)), Budgets(max_latency_s=pick(latency), max_energy_j=pick(energy))]


def test_stages_follow_the_sides_and_send_each_tensor_where_it_is_read():
    graph = TensorGraph.chain([100, 200, 300, 400], 50)
    schedule = Schedule.of(graph, [False, True, True, False])
    assert schedule.describe() == "m0 s1-2 m3" and schedule.transfers == 2 and schedule.prefix_cut is None
    (mobile, server, back) = schedule.stages
    assert server.uploads == (1,) and server.downloads == (3,) and back.segments == (3,)
    assert Schedule.cut(graph, 2).describe() == "m0-1 s2-3" and Schedule.cut(graph, 2).prefix_cut == 2
    # the server keeps nothing: a tensor that skips a mobile stage goes down and comes up again
    class T:
        def __init__(self, name, nbytes):
            self.name, self.nbytes = name, nbytes
    x, a, b, c = T("x", 1), T("a", 10), T("b", 20), T("c", 30)
    skip = TensorGraph.from_segments([x], [([x], [a]), ([a], [b]), ([a, b], [c])], [c])
    stages = plan_stages(skip, [True, False, True])
    assert [s.side for s in stages] == ["server", "mobile", "server"]
    assert stages[0].downloads == (1,) and stages[2].uploads == (1, 2) and stages[2].downloads == (3,)


def test_the_random_instances_need_several_transfers_often():
    """Otherwise the tests below could not tell a shortest path from the best cut."""
    stages = []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        n = 8
        graph = TensorGraph.chain(tensor_bytes(rng, n), rng.uniform(1e1, 1e4))
        costs, c = segment_costs(rng, n), conditions(rng)
        every = np.array(list(itertools.product([False, True], repeat=n)))
        stages.append(Schedule.of(graph, every[brute(graph, costs, c, every)[0].argmin()]).server_stages)
    assert sum(s >= 2 for s in stages) >= 5 and sum(s <= 1 for s in stages) >= 5, stages


@pytest.mark.parametrize("seed", range(12))
def test_exact_planners_equal_brute_force_on_small_graphs(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 10))
    chain = seed % 2 == 0
    graph = TensorGraph.chain(tensor_bytes(rng, n), rng.uniform(1e1, 1e4)) if chain else random_dag(rng, n)
    costs, c = segment_costs(rng, n), conditions(rng)
    every = np.array(list(itertools.product([False, True], repeat=n)))
    values = brute(graph, costs, c, every)
    placements = _placements(graph, 10 ** 6)
    closed = np.array([all(not mask[int(graph.producer[t])] or mask[i] for i, read in enumerate(graph.reads)
                           for t in read if graph.producer[t] >= 0) for mask in every])
    assert {m.tobytes() for m in placements} == {m.tobytes() for m in every[closed]}
    np.testing.assert_allclose(np.stack(ScheduleTerms.placements(graph, placements).costs(
        costs.mobile_s, costs.server_s, costs.mobile_power_w, c, graph.nbytes)), np.stack(brute(graph, costs, c, placements)))
    cuts = np.arange(n)[None, :] >= np.arange(n + 1)[:, None]
    spaces = [(PrefixPlanner, brute(graph, costs, c, cuts)), (MinCutPlanner, brute(graph, costs, c, placements)),
              (lambda g, k: MinCutPlanner(g, k, method="flow"), brute(graph, costs, c, placements))]
    if chain:  # a path over segments is every schedule of a chain
        spaces.append((ShortestPathPlanner, values))
    for planner_class, space in spaces:
        planner = planner_class(graph, costs)
        for objective in OBJECTIVES:
            for budgets in budget_cases(values, rng):
                decision = planner.choose(c, objective, budgets)
                expected = best(space, objective, budgets)
                got = (decision.latency_s, decision.energy_j)[OBJECTIVES.index(objective)]
                if expected is None:
                    assert decision.infeasible, (planner.name, objective, budgets)
                else:
                    assert not decision.infeasible and got == pytest.approx(expected, rel=REL), \
                        (planner.name, getattr(planner, "method", ""), objective, budgets, decision.schedule.describe())
                # the reported prediction is the schedule's exact price
                exact = brute(graph, costs, c, decision.schedule.server_mask[None, :])
                assert decision.latency_s == pytest.approx(float(exact[0][0]), rel=REL)


def chain_milp(graph, costs, c, objective, budgets):
    """Eshratifar & Pedram's constrained problem as an ILP: x_i (segment i on the server), u_k and d_k
    (an upload / a download at boundary k, k = n being the end)."""
    n = graph.n
    cross = graph.nbytes[:n] * 8  # tensor k crosses boundary k (a chain)
    out = graph.nbytes[n] * 8
    up = cross / (c.up_mbps * 1e6)
    down = np.append(cross[1:], out) / (c.down_mbps * 1e6)  # down at boundary k = 1..n
    x, y, p = costs.mobile_s, costs.server_s * c.server_slowdown, costs.mobile_power_w
    trip = c.rtt_s + c.server_wait_s
    # variables: [x_0..x_{n-1}, u_0..u_{n-1}, d_1..d_n]
    lat = np.concatenate([y - x, trip + c.request_s + up, down])
    lat0 = x.sum()
    w = c.wait_power_w  # the radio while the mobile side waits: each round trip, and the server's compute
    energy = np.concatenate([-x * p + y * w, up * c.upload_power_w + trip * w + c.request_s * np.mean(p),
                             down * c.download_power_w])
    energy0 = (x * p).sum()
    server = np.concatenate([y, np.zeros(2 * n)])
    rows, lower = [], []
    for k in range(n):  # u_k >= x_k - x_{k-1}
        row = np.zeros(3 * n)
        row[n + k], row[k] = 1, -1
        if k:
            row[k - 1] = 1
        rows.append(row)
        lower.append(0)
    for k in range(1, n + 1):  # d_k >= x_{k-1} - x_k (x_n = 0: the end is on the mobile side)
        row = np.zeros(3 * n)
        row[2 * n + k - 1], row[k - 1] = 1, -1
        if k < n:
            row[k] = 1
        rows.append(row)
        lower.append(0)
    constraints = [LinearConstraint(np.array(rows), lower, np.inf)]
    for coef, const, limit in ((lat, lat0, budgets.max_latency_s), (energy, energy0, budgets.max_energy_j),
                               (server, 0.0, budgets.max_server_s)):
        if limit is not None:
            constraints.append(LinearConstraint(coef[None, :], -np.inf, limit * (1 + 1e-12) - const))
    objective_coef, const = (lat, lat0) if objective == "latency" else (energy, energy0)
    result = milp(objective_coef, constraints=constraints, integrality=np.ones(3 * n), bounds=Bounds(0, 1))
    return None if result.x is None else result.fun + const


@pytest.mark.parametrize("seed", range(6))
def test_shortest_path_with_budgets_equals_the_milp_on_long_chains(seed):
    rng = np.random.default_rng(100 + seed)
    n = 30
    graph = TensorGraph.chain(tensor_bytes(rng, n), rng.uniform(1e1, 1e4))
    costs, c = segment_costs(rng, n), conditions(rng)
    planner = ShortestPathPlanner(graph, costs)
    sample = brute(graph, costs, c, rng.uniform(size=(400, n)) < 0.5)
    for objective in OBJECTIVES:
        for budgets in budget_cases(sample, rng):
            expected = chain_milp(graph, costs, c, objective, budgets)
            decision = planner.choose(c, objective, budgets)
            got = (decision.latency_s, decision.energy_j)[OBJECTIVES.index(objective)]
            if expected is None:
                assert decision.infeasible
            else:
                assert not decision.infeasible and got == pytest.approx(expected, rel=1e-6), (objective, budgets)


def dads_networkx(graph, costs, c):
    """DADS's construction in networkx, for the latency objective: (cut value + the round trip if any
    segment is on the server, server mask)."""
    g = nx.DiGraph()
    n = graph.n
    consumers = graph.consumers
    up = graph.nbytes * 8 / (c.up_mbps * 1e6)
    for v in range(n):
        down = sum(graph.nbytes[t] for t in graph.outputs if graph.producer[t] == v) * 8 / (c.down_mbps * 1e6)
        g.add_edge("e", v, capacity=costs.server_s[v] * c.server_slowdown + down)
        g.add_edge(v, "c", capacity=costs.mobile_s[v])
    for t in range(len(graph.names)):
        readers = [r for r in consumers[t] if r < n]
        if readers:
            maker = "e" if graph.producer[t] < 0 else int(graph.producer[t])
            g.add_edge(maker, ("aux", t), capacity=up[t])
            for r in readers:
                g.add_edge(("aux", t), r)  # no capacity: infinite
                if maker != "e":
                    g.add_edge(r, maker)
    value, (source_side, _) = nx.minimum_cut(g, "e", "c")
    server = np.array([v not in source_side for v in range(n)])
    return value + (c.rtt_s + c.server_wait_s + c.request_s) * server.any(), server


@pytest.mark.parametrize("seed", range(8))
def test_min_cut_equals_networkx_and_the_best_placement(seed):
    rng = np.random.default_rng(200 + seed)
    n = int(rng.integers(10, 40))
    graph = random_dag(rng, n)
    costs, c = segment_costs(rng, n), conditions(rng)
    value, _ = dads_networkx(graph, costs, c)
    mobile_only = costs.mobile_s.sum()
    for method in ("flow", "placements"):
        decision = MinCutPlanner(graph, costs, method=method).choose(c)
        assert decision.latency_s == pytest.approx(min(value, mobile_only), rel=1e-9), method
    placements = _placements(graph, 10 ** 6)
    if placements is not None:
        assert decision.latency_s == pytest.approx(brute(graph, costs, c, placements)[0].min(), rel=1e-9)


def test_infeasible_budgets_are_named_and_the_best_without_them_is_used():
    graph = TensorGraph.chain([1e6, 1e3], 10)
    costs = SegmentCosts(np.array([2.0, 2.0]), np.array([0.1, 0.1]), np.array([0.1, 0.1]))
    c = Conditions(8.0, 8.0, 0.01, upload_power_w=1.0, download_power_w=1.0)
    for planner in (PrefixPlanner(graph, costs), ShortestPathPlanner(graph, costs), MinCutPlanner(graph, costs)):
        unconstrained = planner.choose(c, "latency")
        decision = planner.choose(c, "latency", Budgets(max_latency_s=0.5))
        assert decision.infeasible == ("latency",) and decision.schedule == unconstrained.schedule
        assert planner.choose(c, "latency", Budgets(max_energy_j=1e-6)).infeasible == ("energy",)
        # separately feasible, not together: 0.4 J needs the mobile side, 1.3 s the server
        together = planner.choose(c, "latency", Budgets(max_latency_s=1.3, max_energy_j=0.35))
        assert together.infeasible == ("the budgets together",)


def test_every_planner_pays_for_bringing_the_outputs_back():
    """A server 100x faster, but a 10 MB output that takes 4 s to come back: the segment that makes it
    runs on the mobile side (the shortest path still sends the first segment to the server)."""
    graph = TensorGraph.chain([1e3, 1e3], 1e7)
    costs = SegmentCosts(np.array([0.1, 0.1]), np.array([0.001, 0.001]), np.array([1.0, 1.0]))
    c = Conditions(10.0, 20.0, 0.01, upload_power_w=1.0, download_power_w=1.0)
    for planner in (PrefixPlanner(graph, costs), ShortestPathPlanner(graph, costs), MinCutPlanner(graph, costs),
                    MinCutPlanner(graph, costs, method="flow")):
        for objective in OBJECTIVES:
            schedule = planner.choose(c, objective).schedule
            assert not schedule.server_mask[-1], (planner.name, objective, schedule.describe())


def test_a_dag_keeps_the_branch_with_the_big_output_and_sends_the_other():
    """x -> s0 -> a; a -> s1 -> b (a 10 MB output); a -> s2 -> c (a small output, 2 s of work here):
    s2 goes to the server, s1 stays, whichever planner can express it (min-cut and shortest-path)."""
    class T:
        def __init__(self, name, nbytes):
            self.name, self.nbytes = name, nbytes
    x, a, b, c_ = T("x", 1e5), T("a", 1e3), T("b", 1e7), T("c", 1e2)
    graph = TensorGraph.from_segments([x], [([x], [a]), ([a], [b]), ([a], [c_])], [b, c_])
    costs = SegmentCosts(np.array([0.01, 0.1, 2.0]), np.array([0.001, 0.001, 0.01]), np.ones(3))
    c = Conditions(10.0, 20.0, 0.01)
    for planner in (MinCutPlanner(graph, costs), MinCutPlanner(graph, costs, method="flow"),
                    ShortestPathPlanner(graph, costs)):
        assert planner.choose(c).schedule.describe() == "m0-1 s2", planner.name


def placement_milp(graph, costs, c, objective, budgets):
    """DADS's placements (no server segment feeds a mobile one) with budgets, as an ILP: x_i (segment i
    on the server), y_t (tensor t uploaded), z (any segment on the server: one round trip)."""
    n, tensors = graph.n, len(graph.names)
    consumers = graph.consumers
    up = graph.nbytes * 8 / (c.up_mbps * 1e6)
    out = np.zeros(n)
    for t in graph.outputs:
        if graph.producer[t] >= 0:
            out[graph.producer[t]] += graph.nbytes[t] * 8 / (c.down_mbps * 1e6)
    x, y, p = costs.mobile_s, costs.server_s * c.server_slowdown, costs.mobile_power_w
    size = n + tensors + 1
    lat = np.concatenate([y - x + out, up, [c.rtt_s + c.server_wait_s + c.request_s]])
    w = c.wait_power_w
    energy = np.concatenate([-x * p + out * c.download_power_w + y * w, up * c.upload_power_w,
                             [(c.rtt_s + c.server_wait_s) * w + c.request_s * np.mean(p)]])
    server = np.concatenate([y, np.zeros(tensors + 1)])
    rows = []
    for t in range(tensors):
        maker = int(graph.producer[t])
        for reader in consumers[t]:
            if reader == n:
                continue
            row = np.zeros(size)  # y_t >= x_reader - x_maker
            row[n + t], row[reader] = 1, -1
            if maker >= 0:
                row[maker] += 1
                order = np.zeros(size)  # x_reader >= x_maker
                order[reader], order[maker] = 1, -1
                rows.append(order)
            rows.append(row)
    for i in range(n):  # z >= x_i
        row = np.zeros(size)
        row[size - 1], row[i] = 1, -1
        rows.append(row)
    constraints = [LinearConstraint(np.array(rows), 0, np.inf)]
    for coef, const, limit in ((lat, x.sum(), budgets.max_latency_s), (energy, (x * p).sum(), budgets.max_energy_j),
                               (server, 0.0, budgets.max_server_s)):
        if limit is not None:
            constraints.append(LinearConstraint(coef[None, :], -np.inf, limit * (1 + 1e-12) - const))
    coef, const = (lat, x.sum()) if objective == "latency" else (energy, (x * p).sum())
    result = milp(coef, constraints=constraints, integrality=np.ones(size), bounds=Bounds(0, 1))
    return None if result.x is None else result.fun + const


@pytest.mark.parametrize("seed", range(6))
def test_min_cut_with_budgets_equals_the_milp_on_larger_dags(seed):
    rng = np.random.default_rng(300 + seed)
    n = int(rng.integers(15, 30))
    graph = random_dag(rng, n)
    costs, c = segment_costs(rng, n), conditions(rng)
    planner = MinCutPlanner(graph, costs)
    assert planner.enumerable
    sample = brute(graph, costs, c, _placements(graph, 10 ** 6))
    for objective in OBJECTIVES:
        for budgets in budget_cases(sample, rng):
            expected = placement_milp(graph, costs, c, objective, budgets)
            decision = planner.choose(c, objective, budgets)
            got = (decision.latency_s, decision.energy_j)[OBJECTIVES.index(objective)]
            if expected is None:
                assert decision.infeasible, (objective, budgets)
            else:
                assert not decision.infeasible and got == pytest.approx(expected, rel=1e-6), (objective, budgets)
