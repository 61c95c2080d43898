"""Providers: the built-ins, user providers by MODULE:ATTR, plugins by entry point, bad specs."""

import importlib.metadata
import sys
import textwrap

import pytest
import torch

from softlight.bench import providers
from softlight.bench.providers import Impl

USER_MODULE = "softlight_test_user_providers"


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / f"{USER_MODULE}.py").write_text(textwrap.dedent("""
        import torch

        def mine(op):
            if op == "softmax":
                return lambda x: torch.softmax(x.float(), -1).to(x.dtype)
            return None

        class Nested:
            provider = staticmethod(mine)

        NOT_CALLABLE = 3
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield USER_MODULE
    sys.modules.pop(USER_MODULE, None)


def test_builtins_are_registered_in_order():
    assert list(providers.registered())[:5] == ["softlight", "torch", "torch.compile", "liger", "quack"]
    assert [p.name for p in providers.resolve(None)][:5] == ["softlight", "torch", "torch.compile", "liger", "quack"]


def test_builtin_implementations():
    x = torch.randn(2, 5)
    soft = providers.BUILTIN["softlight"].implementation("log_softmax")
    ref = providers.BUILTIN["torch"].implementation("log_softmax")
    assert isinstance(soft, Impl) and set(soft.directions) == {"forward", "backward", "forward+backward"}
    torch.testing.assert_close(soft.fn(x), ref.fn(x))


def test_user_provider_by_module_attr(user_module):
    (p,) = providers.resolve([f"{user_module}:mine"])
    assert p.name == "mine" and p.origin == f"{user_module}:mine"
    assert p.implementation("cross_entropy") is None
    x = torch.randn(3, 4)
    torch.testing.assert_close(p.implementation("softmax").fn(x), torch.softmax(x, -1))
    (named,) = providers.resolve([f"fast={user_module}:Nested.provider"])
    assert named.name == "fast"


@pytest.mark.parametrize("spec, match", [
    ("nosuchprovider", "not a registered provider"),
    ("softlight_no_such_module_xyz:f", "cannot import module"),
    (f"{USER_MODULE}:missing", "has no attribute"),
    (f"{USER_MODULE}:NOT_CALLABLE", "not a callable provider"),
    (f"={USER_MODULE}:mine", "NAME=MODULE:ATTR"),
    (f"{USER_MODULE}:", "MODULE:ATTR"),
])
def test_bad_provider_specs_name_the_option(user_module, spec, match):
    with pytest.raises(ValueError, match=match) as info:
        providers.resolve([spec])
    assert "--provider" in str(info.value)


def test_the_same_name_twice_is_refused(user_module):
    with pytest.raises(ValueError, match="given twice"):
        providers.resolve(["softlight", f"softlight={user_module}:mine"])


def test_a_provider_must_return_a_function_impl_or_none():
    p = providers.Provider("odd", lambda op: 42, "test")
    with pytest.raises(TypeError, match="returned int"):
        p.implementation("softmax")
    with pytest.raises(ValueError, match="op must be one of"):
        p.implementation("gelu")


def test_impl_checks_its_fields():
    with pytest.raises(TypeError, match="callable"):
        Impl(3)
    with pytest.raises(ValueError, match="directions"):
        Impl(len, directions=("sideways",))


def _entry_points(*pairs):
    return [importlib.metadata.EntryPoint(name, value, providers.ENTRY_POINT_GROUP) for name, value in pairs]


def test_plugins_by_entry_point(user_module, monkeypatch):
    monkeypatch.setattr(providers, "_entry_points",
                        lambda: _entry_points(("plugged", f"{user_module}:mine"), ("broken", "softlight_no_such_xyz:f")))
    known = providers.registered()
    assert list(known)[-2:] == ["plugged", "broken"]
    assert callable(known["plugged"].implementation("softmax").fn)
    with pytest.raises(ImportError, match="failed to load"):  # reported as unavailable by the run
        known["broken"].implementation("softmax")


def test_a_plugin_may_not_take_a_builtin_name(user_module, monkeypatch):
    monkeypatch.setattr(providers, "_entry_points", lambda: _entry_points(("torch", f"{user_module}:mine")))
    with pytest.raises(ValueError, match="reuses the provider name 'torch'"):
        providers.registered()
