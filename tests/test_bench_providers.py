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
            if op == "linear_cross_entropy":
                return lambda hidden, weight, target: torch.nn.functional.cross_entropy(hidden @ weight.T, target)
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


def test_builtin_implementations_of_the_memory_lean_losses():
    x, ids = torch.randn(3, 40) * 4, torch.randint(0, 40, (3,))
    soft = providers.BUILTIN["softlight"].implementation("token_logprobs")
    eager = providers.BUILTIN["torch"].implementation("token_logprobs")
    expected = torch.log_softmax(x.double(), -1)[torch.arange(3), ids]
    torch.testing.assert_close(eager.fn(x, ids).double(), expected)
    torch.testing.assert_close(soft.fn(x, ids).double(), expected)

    h, w, t = torch.randn(5, 8), torch.randn(40, 8), torch.randint(0, 40, (5,))
    soft = providers.BUILTIN["softlight"].implementation("linear_cross_entropy")
    eager = providers.BUILTIN["torch"].implementation("linear_cross_entropy")
    expected = torch.nn.functional.cross_entropy(h.double() @ w.double().T, t)
    torch.testing.assert_close(eager.fn(h, w, t).double(), expected)
    torch.testing.assert_close(soft.fn(h, w, t).double(), expected)
    # softlight's mean loss has its gradients made in forward: its backward is never timed alone.
    assert soft.directions == ("forward", "forward+backward") and "not timed alone" in soft.note
    assert set(eager.directions) == {"forward", "backward", "forward+backward"}
    for name in ("liger", "quack"):
        try:
            assert providers.BUILTIN[name].implementation("token_logprobs") is None
        except ImportError:
            pass  # not installed here: the run reports it unavailable


def test_liger_linear_cross_entropy_gets_the_weight_first(monkeypatch):
    """Liger's module is called as (weight, hidden, target); a stand-in records what it gets."""
    import types

    calls = []

    class FusedLoss:
        def __call__(self, *args):
            calls.append(args)
            return torch.tensor(2.0), torch.tensor(0.0)  # the (loss, z_loss) form of some versions

    functional = types.ModuleType("liger_kernel.transformers.functional")
    transformers = types.ModuleType("liger_kernel.transformers")
    transformers.LigerFusedLinearCrossEntropyLoss = FusedLoss
    transformers.functional = functional
    package = types.ModuleType("liger_kernel")
    package.transformers = transformers
    for name, module in (("liger_kernel", package), ("liger_kernel.transformers", transformers),
                         ("liger_kernel.transformers.functional", functional)):
        monkeypatch.setitem(sys.modules, name, module)
    impl = providers.BUILTIN["liger"].implementation("linear_cross_entropy")
    h, w, t = torch.zeros(2, 3), torch.ones(5, 3), torch.tensor([0, 4])
    assert float(impl.fn(h, w, t)) == 2.0
    (args,) = calls
    assert args[0] is w and args[1] is h and args[2] is t
    assert impl.directions == ("forward", "forward+backward")


def test_user_provider_by_module_attr(user_module):
    (p,) = providers.resolve([f"{user_module}:mine"])
    assert p.name == "mine" and p.origin == f"{user_module}:mine"
    assert p.implementation("cross_entropy") is None
    x = torch.randn(3, 4)
    torch.testing.assert_close(p.implementation("softmax").fn(x), torch.softmax(x, -1))
    (named,) = providers.resolve([f"fast={user_module}:Nested.provider"])
    assert named.name == "fast"
    # The memory-lean ops reach a user provider by name like the others.
    assert p.implementation("token_logprobs") is None
    h, w, t = torch.randn(4, 6), torch.randn(9, 6), torch.randint(0, 9, (4,))
    torch.testing.assert_close(p.implementation("linear_cross_entropy").fn(h, w, t),
                               torch.nn.functional.cross_entropy(h @ w.T, t))


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
