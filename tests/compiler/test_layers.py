"""Stages 2 and 3: layers in the paper's sense, and the candidate cuts between them."""

import pytest

from neurosurgeon.cli import main
from neurosurgeon.tools import zoo
from neurosurgeon.compiler.analysis import analyse


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


@pytest.mark.parametrize("name", list(zoo.MODELS))
def test_cuts_cover_both_ends_and_are_never_duplicates(name):
    size = zoo.min_input_size(name)
    frozen, graph, plan = analyse(zoo.build(name, input_size=size and max(size, 32), width=0.25))
    cuts = plan.cuts
    assert len(cuts) == len(graph.layers) + 1 == len(plan.segments) + 1
    assert [t.name for t in cuts[0].crossing] == [t.name for t in frozen.inputs]  # cloud-only uploads the input
    assert cuts[-1].crossing == [] and cuts[-1].server_outputs == []  # mobile-only uploads nothing
    for before, after in zip(cuts, cuts[1:]):
        assert [t.name for t in before.crossing] != [t.name for t in after.crossing], (name, after.after_layer)
    # every node lands in exactly one segment, every weight in exactly one segment
    nodes = sum(len(seg.model.graph.node) for seg in plan.segments)
    weights = [init.name for seg in plan.segments for init in seg.model.graph.initializer]
    assert nodes == len(frozen.graph.node) and sorted(weights) == sorted(frozen.constant_names())


def test_dag_cuts_cross_several_tensors():
    _, _, resnet = analyse(zoo.build("resnet18", input_size=32, width=0.25))
    assert max(len(c.crossing) for c in resnet.cuts) == 2  # the skip connection and the block's branch
    _, graph, inception = analyse(zoo.build("inception", input_size=64, width=0.25))
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
