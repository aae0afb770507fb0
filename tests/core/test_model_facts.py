"""ModelFacts: what a model carries into its ONNX metadata and back."""
import pytest

from centernet.constants import COCO_MEAN, COCO_STD
from centernet.core.model_facts import (MEAN_KEY, NETWORK_KEY, ModelFacts, describe_network, network_pad)


def test_facts_round_trip_through_metadata_exactly():
    facts = ModelFacts.for_network("resdcn_18", {"hm": 3, "wh": 2, "reg": 2}, 64, mean=(0.485, 0.456, 0.406),
                                   std=(0.229, 0.224, 0.225), input_size=(384, 384), class_names=("cat", "dog", "é"))
    meta = facts.to_metadata()
    assert all(isinstance(v, str) for v in meta.values())
    assert meta[MEAN_KEY] == "0.485,0.456,0.406"
    assert ModelFacts.from_metadata(meta) == facts
    # Numbers that need all 17 digits come back bit for bit too.
    odd = facts.with_settings(mean=(0.1 + 0.2, 1 / 3, 2 ** -20))
    assert ModelFacts.from_metadata(odd.to_metadata()).mean == odd.mean


def test_a_file_without_facts_is_coco_dla34():
    facts = ModelFacts.from_metadata({})
    assert facts.network == "dla_34" and facts.num_classes == 80 and facts.pad == 31
    assert facts.mean == COCO_MEAN and facts.std == COCO_STD and facts.input_size == (512, 512)
    assert facts.class_names is None
    # The graph's outputs say the heads where the metadata does not.
    assert ModelFacts.from_metadata({}, heads=(("hm", 3), ("wh", 2), ("reg", 2))).num_classes == 3


@pytest.mark.parametrize("meta", [{MEAN_KEY: "1,2"}, {MEAN_KEY: "a,b,c"}, {"centernet.heads": "hm"},
                                  {"centernet.class_names": "[1, 2"}, {"centernet.input_size": "512"}])
def test_malformed_metadata_is_a_value_error(meta):
    with pytest.raises(ValueError, match="metadata"):
        ModelFacts.from_metadata(meta)


def test_hourglass_pads_to_128_the_others_to_32():
    assert network_pad("hourglass") == 127 and network_pad("res_18") == 31 and network_pad("dla_34") == 31
    hg = ModelFacts.from_metadata({NETWORK_KEY: "hourglass"})
    assert hg.pad == 127 and hg.input_multiple == 128


def test_descriptions():
    assert describe_network("resdcn_101") == "ResNet-101 with DCN"
    assert describe_network("dlav0_34") == "DLA-34 without DCN"
    assert ModelFacts.for_network("res_18", {"hm": 1, "wh": 2, "reg": 2}, 64).describe() == \
        "ResNet-18, 1 class, head width 64"


def test_names_must_fit_the_classes_and_std_be_positive():
    with pytest.raises(ValueError, match="2 class names for 80 classes"):
        ModelFacts(class_names=("a", "b"))
    with pytest.raises(ValueError, match="std must be positive"):
        ModelFacts(std=(1, 0, 1))
