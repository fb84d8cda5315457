import numpy as np
import pytest

from bioreason.data import parse_perturbation_labels


def dense(parsed):
    return parsed.dosage.toarray()


def test_singles_combinations_and_controls():
    parsed = parse_perturbation_labels(["control", "A", "B+A", "A+B", "C"], control="control")
    assert parsed.perturbation_names == ["A", "B", "C"]
    np.testing.assert_array_equal(
        dense(parsed), [[0, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 0], [0, 0, 1]]
    )
    assert parsed.is_control.tolist() == [True, False, False, False, False]
    conditions = np.asarray(parsed.condition_names)[parsed.condition_codes]
    # B+A and A+B are one condition.
    assert conditions.tolist() == ["control", "A", "A+B", "A+B", "C"]
    assert parsed.dosage.dtype == np.float32


def test_custom_delimiter_and_control_labels():
    labels = ["ctrl", "non-targeting", "KLF1_ctrl", "KLF1_MAP2K6", ""]
    parsed = parse_perturbation_labels(labels, control=["ctrl", "non-targeting", ""], delimiter="_")
    assert parsed.perturbation_names == ["KLF1", "MAP2K6"]
    np.testing.assert_array_equal(dense(parsed), [[0, 0], [0, 0], [1, 0], [1, 1], [0, 0]])
    assert parsed.is_control.tolist() == [True, True, False, False, True]
    # A control part inside a label is dropped: KLF1_ctrl is the single KLF1.
    assert parsed.condition_names[parsed.condition_codes[2]] == "KLF1"


def test_dosages_scale_or_split_per_component():
    parsed = parse_perturbation_labels(
        ["A", "A+B", "A+B", "control"], dosages=[2.0, "1+3", "0.5", "1"]
    )
    np.testing.assert_allclose(dense(parsed), [[2, 0], [1, 3], [0.5, 0.5], [0, 0]])


def test_fixed_perturbation_names_order_and_unknown_error():
    parsed = parse_perturbation_labels(["B", "A"], perturbation_names=["B", "A", "C"])
    np.testing.assert_array_equal(dense(parsed), [[1, 0, 0], [0, 1, 0]])
    with pytest.raises(ValueError, match=r"names perturbations \['D'\] that are not among"):
        parse_perturbation_labels(["D"], perturbation_names=["A"])


@pytest.mark.parametrize(
    "labels, message",
    [
        (["control", "A+"], r"label 'A\+' has an empty part"),
        (["control", ""], r"label '' has an empty part"),
        (["control", None], r"missing \(NaN\) at row 1"),
    ],
)
def test_label_errors(labels, message):
    with pytest.raises(ValueError, match=message):
        parse_perturbation_labels(labels)


def test_dose_errors():
    with pytest.raises(ValueError, match=r"dosage '1\+2\+3' has 3 parts but label 'A\+B' has 2"):
        parse_perturbation_labels(["A+B"], dosages=["1+2+3"])
    with pytest.raises(ValueError, match="is not a number"):
        parse_perturbation_labels(["A"], dosages=["high"])


def test_canonical_conditions_sort_parts_and_name_the_argument():
    from bioreason.data import canonical_conditions

    assert canonical_conditions(["SET+KLF1", "KLF1+SET", "A", "control"]) == [
        "KLF1+SET",
        "KLF1+SET",
        "A",
        "control",
    ]
    with pytest.raises(TypeError, match=r"heldout must be a list.*\['A\+B'\]"):
        canonical_conditions("A+B", where="heldout")
    with pytest.raises(ValueError, match="heldout"):
        canonical_conditions(["A+"], where="heldout")
