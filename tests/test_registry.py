import pytest

from bioreason.registry import Registry, UnknownEntryError


def test_register_get_metadata_and_decorator():
    reg = Registry("scoring rule")

    @reg.register("brier", bounded=True)
    def brier(q, y):
        return -((q - y) ** 2)

    reg.register("log", abs)
    assert reg.get("brier") is brier
    assert reg["log"] is abs
    assert reg.metadata("brier") == {"bounded": True}
    assert reg.metadata("log") == {}
    assert list(reg) == ["brier", "log"] and len(reg) == 2 and "log" in reg
    assert reg.where(lambda meta: meta.get("bounded", False)) == ["brier"]
    assert reg == {"brier": brier, "log": abs}
    assert reg.get("missing", None) is None


def test_unknown_name_lists_choices_and_is_key_and_value_error():
    reg = Registry("advantage estimator")
    reg.register("grpo", 1)
    reg.register("rloo", 2)
    for lookup in (reg.get, reg.__getitem__, reg.metadata):
        with pytest.raises(
            UnknownEntryError, match=r"unknown advantage estimator 'gpro'.*'grpo', 'rloo'"
        ):
            lookup("gpro")
    with pytest.raises(KeyError):
        reg["gpro"]
    with pytest.raises(ValueError):
        reg["gpro"]


def test_duplicate_names_refused_unless_overwrite():
    reg = Registry("model")
    reg.register("a", 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a", 2)
    reg.register("a", 3, overwrite=True)
    assert reg["a"] == 3
    assert reg.unregister("a") == 3 and "a" not in reg
    with pytest.raises(TypeError, match="non-empty string"):
        reg.register("", 1)
