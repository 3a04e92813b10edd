"""Stages 2 and 3: layers in the paper's sense, and the candidate cuts between them."""

import numpy as np
import pytest

from neurosurgeon.cli import main
from neurosurgeon.tools import zoo
from neurosurgeon.compiler.analysis import analyse
from neurosurgeon.compiler.partition import PARTITIONERS, get_partitioner
from neurosurgeon.runtime.errors import NeurosurgeonError


@pytest.fixture(scope="module")
def alexnet():
    return analyse(zoo.build("alexnet"))


def test_alexnet_layers_follow_the_paper(alexnet):
    frozen, graph, plan = alexnet
    types = [layer.type for layer in graph.layers]
    assert types[:8] == ["conv", "activation", "normalization", "pooling", "conv", "activation", "normalization", "pooling"]
    assert types[-2:] == ["fc", "softmax"] and types.count("fc") == 3 and types.count("conv") == 5
    # Flatten and Dropout move no data worth a cut: they belong to the layer before them.
    by_name = {layer.name: layer for layer in graph.layers}
    assert by_name["pool5"].ops == ["MaxPool", "Flatten"]
    assert by_name["relu6"].ops == ["Relu", "Dropout"]
    assert "reshape" not in types


def test_configuration_and_flops_are_the_papers_variables(alexnet):
    frozen, graph, _ = alexnet
    conv1 = graph.layers[0]
    c_in, h_in = frozen.inputs[0].shape[1], frozen.inputs[0].shape[2]
    h_out = (h_in + 2 * 2 - 11) // 4 + 1  # conv1 pads by 2, as torchvision's AlexNet does
    assert conv1.config["kernel"] == [11, 11] and conv1.config["stride"] == [4, 4]
    assert conv1.config["in_features"] == c_in * h_in * h_in
    assert conv1.config["filter_term"] == pytest.approx((11 / 4) ** 2 * 96)
    assert conv1.flops == 2 * 96 * h_out * h_out * c_in * 11 * 11
    assert conv1.outputs[0].shape == (1, 96, h_out, h_out) and conv1.output_bytes == 96 * h_out * h_out * 4
    fc6 = next(layer for layer in graph.layers if layer.name == "fc6")
    assert fc6.config == {"in_neurons": 256 * 6 * 6, "out_neurons": 4096, "rows": 1}
    assert fc6.flops == 2 * 256 * 6 * 6 * 4096
    assert graph.layers[1].config == {"neurons": 96 * h_out * h_out}


@pytest.mark.parametrize("partitioner", sorted(PARTITIONERS))
@pytest.mark.parametrize("name", list(zoo.MODELS))
def test_cuts_cover_both_ends_and_are_never_duplicates(name, partitioner):
    size = zoo.min_input_size(name)
    frozen, graph, plan = analyse(zoo.build(name, input_size=size and max(size, 32), width=0.25),
                                  partitioner=partitioner)
    cuts = plan.cuts
    assert len(cuts) == len(plan.segments) + 1 and plan.partitioner == partitioner
    assert cuts[0].layer_boundary == 0 and cuts[-1].layer_boundary == len(graph.layers)
    if partitioner == "layer-boundaries":
        assert len(cuts) == len(graph.layers) + 1
    assert [t.name for t in cuts[0].crossing] == [t.name for t in frozen.inputs]  # cloud-only uploads the input
    assert cuts[-1].crossing == [] and cuts[-1].server_outputs == []  # mobile-only uploads nothing
    for before, after in zip(cuts, cuts[1:]):
        assert [t.name for t in before.crossing] != [t.name for t in after.crossing], (name, after.after_layer)
    # every node lands in exactly one segment, every weight in exactly one segment
    nodes = sum(len(seg.model.graph.node) for seg in plan.segments)
    weights = [init.name for seg in plan.segments for init in seg.model.graph.initializer]
    assert nodes == len(frozen.graph.node) and sorted(weights) == sorted(frozen.constant_names())


@pytest.mark.parametrize("name", ["alexnet", "resnet18", "mobilenetv2", "asr"])
def test_fused_layers_drop_only_boundaries_inside_a_pointwise_epilogue(name):
    """The default partitioner keeps conv + BN + activation (and fc + activation, and conv + BN + a skip
    connection's add + activation) in one segment: every boundary it drops lies before a pointwise
    layer that alone reads the layer before it, so cutting there would upload exactly the bytes of
    cutting after it, or, before a residual add, more (both its operands)."""
    model = zoo.build(name, input_size=64 if zoo.own_input_size(name) else None, width=0.25)
    _, graph, every = analyse(model, partitioner="layer-boundaries")
    _, _, fused = analyse(model, partitioner="fused-layers")
    assert fused.partitioner == "fused-layers"
    kept = [c.layer_boundary for c in fused.cuts]
    dropped = sorted(set(range(len(graph.layers) + 1)) - set(kept))
    assert dropped and set(kept) <= set(range(len(graph.layers) + 1))
    for b in dropped:
        layer = graph.layers[b]
        assert layer.type in ("activation", "normalization", "elementwise"), layer.name
        if len(layer.inputs) == 1:
            assert every.cuts[b].upload_bytes == every.cuts[b + 1].upload_bytes, layer.name
        else:  # a residual add
            assert every.cuts[b].upload_bytes > every.cuts[b + 1].upload_bytes, layer.name
    segments = {tuple(s.layer_names) for s in fused.segments}
    if name == "resnet18":  # conv + BN + ReLU in one segment, and conv + BN + the residual add + ReLU
        assert ("conv1", "bn1", "relu1") in segments
        assert ("layer1.0.conv2", "layer1.0.bn2", "layer1.0.add", "layer1.0.relu2") in segments
    if name == "mobilenetv2":
        assert ("block1.dw", "block1.dw_bn", "block1.dw_relu6") in segments
        assert len(fused.segments) < len(every.segments) / 2
    if name == "asr":
        assert not any(s[0].startswith("sigmoid") for s in segments) and ("fc1", "sigmoid1") in segments


def test_an_unknown_partitioner_is_refused_by_name(tmp_path, capsys):
    with pytest.raises(NeurosurgeonError, match="unknown partitioner 'every-op'.*fused-layers, layer-boundaries"):
        get_partitioner("every-op")
    model = tmp_path / "lenet.onnx"
    zoo.save(zoo.build("lenet"), model)
    assert main(["inspect", str(model), "--partitioner", "every-op"]) == 2
    assert "unknown partitioner 'every-op'" in capsys.readouterr().err


def test_dag_cuts_cross_several_tensors():
    _, _, resnet = analyse(zoo.build("resnet18", input_size=32, width=0.25), partitioner="fused-layers")
    assert max(len(c.crossing) for c in resnet.cuts) == 2  # the skip connection and the block's branch
    _, graph, inception = analyse(zoo.build("inception", input_size=64, width=0.25), partitioner="fused-layers")
    widest = max(inception.cuts, key=lambda c: len(c.crossing))
    assert len(widest.crossing) >= 4  # inside an inception module, its branches
    assert widest.upload_bytes == sum(t.nbytes for t in widest.crossing)
    outputs = {t.name for t in graph.model.outputs}
    assert len(outputs) == 2
    late = inception.cuts[-2]
    assert {t.name for t in late.mobile_outputs} | {t.name for t in late.server_outputs} == outputs


def test_inspect_prints_tables_and_plots(tmp_path, capsys):
    model = tmp_path / "lenet.onnx"
    zoo.save(zoo.build("lenet"), model)
    plot = tmp_path / "layers.png"
    assert main(["inspect", str(model), "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "conv1" in out and "candidate cuts" in out and "cloud-only" in out and "mobile-only" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000


@pytest.mark.parametrize("name", ["alexnet", "resnet18", "mobilenetv2", "inception", "deepface", "asr"])
def test_upload_envelope_drops_only_cuts_no_planner_would_choose(name):
    """Every fused-layers cut that upload-envelope drops is never the best, in latency or mobile energy,
    for the real planner over random per-segment costs within its stated range (every segment at least
    as fast on the loaded server as on the device; device power above the radio's) and random links,
    round trips and queues: the best over the kept cuts equals the best over all of them."""
    from neurosurgeon.runtime.planner import Conditions, PrefixPlanner, SegmentCosts
    from neurosurgeon.runtime.schedule import TensorGraph

    size = zoo.min_input_size(name)
    model = zoo.build(name, input_size=size and max(size, 64), width=0.25)
    frozen, graph, fused = analyse(model, partitioner="fused-layers")
    kept = get_partitioner("upload-envelope").boundaries(graph)
    bounds = [c.layer_boundary for c in fused.cuts]
    assert set(kept) <= set(bounds) and kept[0] == 0 and kept[-1] == len(graph.layers)
    assert len(kept) < len(bounds)
    kept_cuts = [bounds.index(b) for b in kept]
    tensors = TensorGraph.from_segments(frozen.inputs, [(s.inputs, s.outputs) for s in fused.segments], frozen.outputs)
    rng = np.random.default_rng(0)
    flops = np.array([max(s.flops, 1) for s in fused.segments], dtype=np.float64)
    for _ in range(200):
        mobile = flops / np.exp(rng.uniform(np.log(1e5), np.log(1e10))) * rng.uniform(0.3, 3.0, len(flops))  # per-segment efficiency
        slowdown = rng.uniform(1.0, 8.0)
        server = mobile * rng.uniform(0.0, 1.0, len(flops)) / slowdown  # no segment slower there, loaded
        power = rng.uniform(1.0, 5.0)
        planner = PrefixPlanner(tensors, SegmentCosts(mobile, server, np.full(len(flops), power)))
        up = float(np.exp(rng.uniform(np.log(0.05), np.log(1000))))
        c = Conditions(up, up * rng.uniform(1, 10), rng.uniform(0.001, 0.1), server_wait_s=rng.uniform(0, 0.2),
                       server_slowdown=slowdown, upload_power_w=rng.uniform(0.5, 3), download_power_w=rng.uniform(0.5, 3),
                       wait_power_w=rng.uniform(0.0, 1.0) * power)
        for costs in planner.predict(c)[:2]:  # latency, energy
            assert costs[kept_cuts].min() <= costs.min() * (1 + 1e-9), name
