"""The name registries: registration (which sets the class's one name), lookup errors that list the known
names, no silent overwrite. Plugin discovery and `resolve`: test_plugins.py."""

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
    reg.register("alpha")(type("Alpha", (), {}))
    with pytest.raises(KeyError, match="unknown thing 'beta'; registered: alpha"):
        reg.get("beta")


def test_double_registration_is_an_error() -> None:
    reg: Registry[type] = Registry("thing")
    a, b = type("A", (), {}), type("B", (), {})
    reg.register("a")(a)
    reg.register("a")(a)  # same object again is fine
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(b)


def test_the_registry_sets_the_name_and_refuses_another_one() -> None:
    reg: Registry[type] = Registry("thing", plugins=False)

    @reg.register("alpha")
    class A:
        pass

    assert A.name == "alpha"  # type: ignore[attr-defined]

    class B:
        name = "beta"

    with pytest.raises(ValueError, match="declares name = 'beta'"):
        reg.register("gamma")(B)
    reg.register("beta")(B)  # the same name is fine (the ClassVar is merely redundant)
