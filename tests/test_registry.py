"""The name registries: registration, lookup errors that list the known names, no silent overwrite."""

import pytest

from fgbench.registry import Registry


def test_register_and_get() -> None:
    reg: Registry[type] = Registry("thing")

    @reg.register("a")
    class A:
        pass

    assert reg.get("a") is A
    assert "a" in reg and "b" not in reg
    assert reg.list() == ["a"]


def test_unknown_name_lists_known() -> None:
    reg: Registry[type] = Registry("thing")
    reg.register("alpha")(int)
    with pytest.raises(KeyError, match="unknown thing 'beta'; registered: alpha"):
        reg.get("beta")


def test_double_registration_is_an_error() -> None:
    reg: Registry[type] = Registry("thing")
    reg.register("a")(int)
    reg.register("a")(int)  # same object again is fine
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(float)
