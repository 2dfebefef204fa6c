"""The presets are the one home of the known datasets' classes and regions (SPEC sections 4 and 5)."""

from medcontext.data.presets import PRESETS


def test_presets_follow_the_spec():
    assert PRESETS["brats21"].regions == {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}
    assert PRESETS["brats17"].regions == {"WT": (1, 2, 3), "TC": (2, 3), "ET": (3,)}
    acdc = PRESETS["acdc"]
    assert [acdc.labels[c] for c in acdc.eval_classes] == ["RV", "MYO", "LV"]
    synapse = PRESETS["synapse"]
    assert synapse.eval_classes == (1, 2, 3, 4, 6, 7, 8, 11)  # the paper's 8 organs of the 13 BTCV labels
    assert [synapse.labels[c] for c in synapse.eval_classes] == [
        "spleen", "right kidney", "left kidney", "gallbladder", "liver", "stomach", "aorta", "pancreas",
    ]
