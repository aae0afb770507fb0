"""CenterNet_benchmark.py --networks: upstream's networks side by side in one
run, and the FLOP counter on their layers (transposed convolutions, DCNs,
containers that are never called themselves). Speed is never asserted."""
import json

import pytest
from torch import nn

import CenterNet_benchmark
from centernet.bench.benchmark import format_table
from centernet.bench.flops import count_flops
from centernet.bench.network_benchmark import format_network_table, network_table_columns, run_network_benchmark
from centernet.errors import UserError
from centernet.model.networks import build_network

TINY = (64, 64)
HEADS = {"hm": 80, "wh": 2, "reg": 2}


# --- hand counts (a multiply-add is 2 FLOPs) ------------------------------------

def conv(cin, cout, k, h, w):
    """A k x k convolution with an h x w output."""
    return 2 * cin * cout * k * k * h * w


def deconv(cin, cout, h, w):
    """upstream's 4x4 stride-2 transposed convolution on an h x w input: every
    input pixel through cout 4x4 kernels."""
    return 2 * cin * cout * 16 * h * w


def resnet18_backbone(size):
    """ResNet-18 (BasicBlocks, two a stage) on a size x size input, to the
    stride-32 map: {"Conv2d": ...}."""
    s = size // 4                                # after conv1 (stride 2) and the max pool
    total = conv(3, 64, 7, size // 2, size // 2)
    cin = 64
    for stage, planes in enumerate((64, 128, 256, 512)):
        if stage:
            s //= 2
        total += conv(cin, planes, 3, s, s) + conv(planes, planes, 3, s, s)   # block 0
        if cin != planes:
            total += conv(cin, planes, 1, s, s)                              # its 1x1 downsample
        total += 2 * conv(planes, planes, 3, s, s)                           # block 1
        cin = planes
    return total, s


def heads(cin, s, head_conv=64):
    return sum(conv(cin, head_conv, 3, s, s) + conv(head_conv, c, 1, s, s) for c in HEADS.values())


def hand_res18(size):
    convs, s = resnet18_backbone(size)
    ups = deconv(512, 256, s, s) + deconv(256, 256, 2 * s, 2 * s) + deconv(256, 256, 4 * s, 4 * s)
    return {"Conv2d": convs + heads(256, 8 * s), "ConvTranspose2d": ups}


def hand_resdcn18(size):
    convs, s = resnet18_backbone(size)
    dcn = ups = 0
    cin = 512
    for planes in (256, 128, 64):
        dcn += conv(cin, planes, 3, s, s)          # the deformable product: a 3x3 conv's
        convs += conv(cin, 27, 3, s, s)             # its offset/mask conv: 2x9 offsets, 9 masks
        ups += deconv(planes, planes, s, s)
        cin, s = planes, 2 * s
    return {"Conv2d": convs + heads(64, s), "DCN": dcn, "ConvTranspose2d": ups}


@pytest.mark.parametrize("network,hand", [("res_18", hand_res18), ("resdcn_18", hand_resdcn18)])
def test_flop_counter_against_hand_count_of_resnets(network, hand):
    counted = count_flops(build_network(network, HEADS), TINY)
    assert counted["by_type"] == hand(TINY[0])
    assert counted["total"] == sum(hand(TINY[0]).values())


class ListedNet(nn.Module):
    """Layers in a ModuleList that the parent calls item by item (the list
    itself is never called), as Hourglass-104 holds its stacks."""

    def __init__(self):
        super().__init__()
        self.stacks = nn.ModuleList([nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 1)])
        self.ups = nn.ModuleList([nn.ConvTranspose2d(4, 2, 4, stride=2, padding=1)])

    def forward(self, x):
        for layer in self.stacks:
            x = layer(x)
        return self.ups[0](x)


def test_flop_counter_counts_layers_in_a_module_list_by_their_type():
    counted = count_flops(ListedNet(), (6, 8))
    assert counted["by_type"] == {"Conv2d": conv(3, 4, 3, 6, 8) + conv(4, 4, 1, 6, 8),
                                  "ConvTranspose2d": deconv(4, 2, 6, 8)}


# --- the network table ---------------------------------------------------------

@pytest.fixture(scope="module")
def network_result(upstream_checkpoint, tmp_path_factory):
    # dla_34 from the checkpoint (its weights), the others random: calibrated on
    # a few small photos, which is all a timing needs. One thread, ONNX Runtime
    # only, one batch: the structure is tested, not the speed.
    result = run_network_benchmark(["res_18", "resdcn_18", "dla_34"], checkpoint=upstream_checkpoint,
                                   backends=["onnxruntime-cpu"], batchsizes=(1,), loop=1, threads=1,
                                   input_size=TINY, workdir=tmp_path_factory.mktemp("nets"), sgemm_n=128,
                                   random_options={"calibration_size": TINY, "calibration_images": 2})
    return result, upstream_checkpoint


def table_rows(table):
    lines = table.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("| network |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    body = []
    for ln in lines[start + 2:]:
        if not ln.startswith("| "):
            break
        body.append(dict(zip(header, (c.strip() for c in ln.strip("|").split("|")))))
    return header, body


def test_network_table_has_a_row_per_network_with_counted_flops_and_ratios(network_result):
    result, checkpoint = network_result
    header, body = table_rows(format_network_table(result))
    assert header == ["network", "params M", "GFLOP/image", "batch", "onnxruntime-cpu fps",
                      "onnxruntime-cpu of sgemm", "onnxruntime-cpu x dla_34"]
    assert header == network_table_columns(result)[0]
    assert [row["network"].removesuffix(" *") for row in body] == [
        "res_18 (ResNet-18, 80 classes, head width 64)",
        "resdcn_18 (ResNet-18 with DCN, 80 classes, head width 64)",
        "dla_34 (DLA-34 with DCN, 80 classes, head width 256)"]
    hand = {"res_18": sum(hand_res18(TINY[0]).values()), "resdcn_18": sum(hand_resdcn18(TINY[0]).values())}
    by_name = {e["network"]: e for e in result["networks"]}
    for network, flops in hand.items():
        assert by_name[network]["result"]["flops_per_image"] == flops
    for row, e in zip(body, result["networks"]):
        assert float(row["GFLOP/image"]) == pytest.approx(e["result"]["flops_per_image"] / 1e9, abs=0.005)
        assert float(row["params M"]) == pytest.approx(e["params"] / 1e6, abs=0.05)
        assert row["batch"] == "1" and float(row["onnxruntime-cpu fps"]) > 0
        assert row["onnxruntime-cpu of sgemm"].endswith("%")
        ratio = float(row["onnxruntime-cpu x dla_34"].removesuffix("x"))
        r = e["result"]["rows"][0]
        assert ratio == pytest.approx(r["fps"] / by_name["dla_34"]["result"]["rows"][0]["fps"], abs=0.006)
    assert body[2]["onnxruntime-cpu x dla_34"] == "1.00x"
    assert by_name["res_18"]["params"] == sum(p.numel() for p in build_network("res_18").parameters())


def test_networks_share_one_run_setting(network_result):
    """Same input, threads and sgemm ceiling for every network; the checkpoint
    goes to the network it holds, random weights to the others."""
    result, checkpoint = network_result
    sgemm = result["sgemm_gflops"]
    for e in result["networks"]:
        r = e["result"]
        assert r["sgemm_gflops"] == sgemm and r["input_size"] == list(TINY) and r["threads"] == 1
        for row in r["rows"]:
            # of_sgemm is the unrounded GFLOP/s over the shared ceiling, rounded to 3
            # places; gflops is rounded to 2, so recomputing from it can move the
            # third place: allow exactly the two roundings.
            bound = 0.0005 + 0.005 / sgemm["ceiling"]
            assert abs(row["of_sgemm"] - row["gflops"] / sgemm["ceiling"]) <= bound + 1e-12
    weights = {e["network"]: e["weights"] for e in result["networks"]}
    assert weights["dla_34"] == str(checkpoint)
    assert weights["res_18"].startswith("random") and weights["resdcn_18"].startswith("random")
    table = format_network_table(result)
    assert f"weights of dla_34: {checkpoint}" in table and f"sgemm ceiling {sgemm['ceiling']}" in table
    # Only DLA-34 has a published count to check against; the others' tables say none.
    by_name = {e["network"]: e["result"] for e in result["networks"]}
    assert by_name["dla_34"]["reference_flops_per_image"] is not None
    assert by_name["res_18"]["reference_flops_per_image"] is None
    assert "expected" not in format_table(by_name["res_18"]).splitlines()[2]


def test_without_dla34_there_is_no_ratio_column(network_result):
    result, _ = network_result
    others = dict(result, baseline=None, networks=[e for e in result["networks"] if e["network"] != "dla_34"])
    header, body = table_rows(format_network_table(others))
    assert header == ["network", "params M", "GFLOP/image", "batch", "onnxruntime-cpu fps",
                      "onnxruntime-cpu of sgemm"]
    assert len(body) == 2


def test_checkpoint_of_an_unlisted_network_is_refused_before_measuring(upstream_checkpoint, tmp_path):
    with pytest.raises(UserError, match=r"holds dla_34 .* --networks does not list \(res_18\)"):
        run_network_benchmark(["res_18"], checkpoint=upstream_checkpoint, workdir=tmp_path, threads=1)


def test_hourglass_needs_multiples_of_128(tmp_path):
    with pytest.raises(UserError, match="--input-size 64 64: Hourglass-104 needs multiples of 128"):
        run_network_benchmark(["res_18", "hourglass"], input_size=TINY, workdir=tmp_path, threads=1)


def test_cli_networks(tmp_path, capsys):
    out = tmp_path / "n.json"
    assert CenterNet_benchmark.main([
        "--networks", "res_18", "--backends", "onnxruntime-cpu", "--input-size", *map(str, TINY),
        "--batchsize", "1", "--loop", "1", "--threads", "1", "--sgemm-size", "64",
        "--workdir", str(tmp_path / "w"), "--json", str(out)]) == 0
    stdout = capsys.readouterr().out
    header, body = table_rows(stdout)
    assert len(body) == 1 and body[0]["network"].startswith("res_18 (ResNet-18")
    assert "onnxruntime-cpu x dla_34" not in header
    data = json.loads(out.read_text())
    assert [e["network"] for e in data["networks"]] == ["res_18"]
    assert data["networks"][0]["result"]["flops_per_image"] == sum(hand_res18(TINY[0]).values())


@pytest.mark.parametrize("option", [["--plot"], ["--profile"], ["--modes"], ["--onnx", "x.onnx"]])
def test_cli_networks_refuses_single_network_options(option):
    with pytest.raises(UserError, match=f"{option[0]} does not go with --networks"):
        CenterNet_benchmark.parse_args(["--networks", "res_18", *option])


def test_cli_without_networks_is_the_backend_table():
    assert CenterNet_benchmark.parse_args([]).networks is None
    assert CenterNet_benchmark.parse_args(["--networks", "dla_34", "hourglass"]).networks == ["dla_34", "hourglass"]
    with pytest.raises(SystemExit):
        CenterNet_benchmark.parse_args(["--networks", "res_19"])


