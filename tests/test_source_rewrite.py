"""The source rewrite on forwards written in the ways real models write them.

Class 4, method and functional spellings of a residual add: ``a.add(b)``, ``h.add_(b)`` (``h``
read afterwards), ``torch.add(a, b, alpha=...)``, ``torch.Tensor.add``, ``operator.add``; an
``alpha`` other than 1 scales the branch (``a + alpha * b``), and a scaled *stream* is no site.
Class 7, robustness of the rewrite: private (name-mangled) attributes, closures shared with the
defining scope, decorators without ``functools.wraps``.

Every model is checked like the zoo: equal to the original at init (outputs in eval and train,
gradients of every original parameter) in the exact modes, and the site / chain counts.
"""

from __future__ import annotations

import functools
import inspect
import operator
import types
from operator import add as plus

import pytest
import torch
import torch as th
from torch import nn

import mhc_fx
from mhc_fx.transform.convert import HELPERS
from mhc_fx.transform.source import add_locations, count_adds, rewrite_function
from tests.helpers import assert_exact, chains, perturb_mixing, reasons


# =====================================================================================================
# Class 4: method and functional spellings
# =====================================================================================================
class MethodForms(nn.Module):
    """Every spelling of a residual add in a row: 11 sites, ONE chain (each stream is the previous site's
    output). With ``shape_check`` the forward branches on ``x.dim()``, which fx cannot trace (export can)."""

    def __init__(self, dim: int = 8, alpha: float = 0.5, shape_check: bool = False) -> None:
        super().__init__()
        self.inp = nn.Linear(4, dim)
        self.f = nn.ModuleList(nn.Linear(dim, dim) for _ in range(11))
        self.head = nn.Linear(dim, 3)
        self.alpha = alpha
        self.shape_check = shape_check

    def forward(self, x):
        if self.shape_check and x.dim() == 3:
            x = x.mean(1)
        h = self.inp(x)
        h = h + self.f[0](h)  # a + b
        h = h.add(self.f[1](h))  # a.add(b)
        h.add_(self.f[2](torch.relu(h)))  # in place, result unused, h read afterwards
        h = torch.add(h, self.f[3](h), alpha=1)  # alpha 1: a plain add
        h = torch.add(h, self.f[4](h), alpha=self.alpha)  # scaled branch: h + alpha * f(h)
        h = h.add(self.f[5](h), alpha=self.alpha)  # the same, as a method
        h = torch.Tensor.add(h, self.f[6](h))
        h = operator.add(h, self.f[7](h))
        h = th.add(h, self.f[8](h))  # torch imported under another name
        h = plus(h, self.f[9](h))  # from operator import add as plus
        y = h.add_(self.f[10](torch.relu(h)))  # in place, result used
        return self.head(y)


@pytest.mark.parametrize("capture", ["fx", "fx_shapes", "export"])
def test_method_and_functional_adds_are_sites_of_one_chain(capture):
    torch.manual_seed(0)
    model = MethodForms(shape_check=capture == "export")
    x = torch.randn(5, 4)
    example = None if capture == "fx" else (x,)
    if capture == "export":
        with pytest.raises(ValueError, match="fx cannot trace"):
            mhc_fx.explain(model)  # the model really needs export
    converted = assert_exact(model, x, example_inputs=example)  # alpha 0.5: alpha * b is exact
    report = mhc_fx.explain(converted)
    assert report.capture == ("export" if capture == "export" else "fx")
    assert len(report.sites) == 11 and chains(report) == (11,), str(report)
    assert report.skipped == [], str(report)
    # the sites mix: one step on the logits moves the output
    perturb_mixing(converted, seed=1)
    assert not torch.allclose(converted(x), model(x))


class ScaledBranch(nn.Module):
    """``torch.add(h, f(h), alpha=a)`` (``spelling="torch"``), ``h.add(f(h), alpha=a)`` (``"method"``), or the
    same written out, ``h + a * f(h)`` (``"written"``): three sites, one chain."""

    def __init__(self, spelling: str, alpha: float, dim: int = 8) -> None:
        super().__init__()
        self.f = nn.ModuleList(nn.Linear(dim, dim) for _ in range(3))
        self.spelling, self.alpha = spelling, alpha

    def forward(self, x):
        for f in self.f:
            if self.spelling == "torch":
                x = torch.add(x, f(x), alpha=self.alpha)
            elif self.spelling == "method":
                x = x.add(f(x), alpha=self.alpha)
            else:
                x = x + self.alpha * f(x)
        return x


@pytest.mark.parametrize("spelling", ["torch", "method"])
def test_alpha_scales_the_branch(spelling):
    torch.manual_seed(0)
    model = ScaledBranch(spelling, alpha=0.3)
    x = torch.randn(4, 8)
    # torch.add fuses the multiply-add; the rewrite rounds alpha * b first: one rounding apart
    converted = assert_exact(model, x, rtol=1e-6)
    report = mhc_fx.explain(converted)
    assert len(report.sites) == 3 and chains(report) == (3,)
    # the site's branch is alpha * f(h): the same mixing as the written-out model, weights and logits alike
    written = ScaledBranch("written", alpha=0.3)
    written.load_state_dict(model.state_dict())
    written = mhc_fx.convert(written)
    converted = mhc_fx.convert(model)
    perturb_mixing(converted, seed=3)
    perturb_mixing(written, seed=3)
    assert torch.equal(converted(x), written(x))
    assert not torch.allclose(converted(x), model(x))


class ScaledStream(nn.Module):
    """``torch.add(f(h), h, alpha=0.5)`` / ``f(h).add(h, alpha=0.5)``: the scaled operand is the stream, so
    that add is no site and the chain restarts after it: 2 sites, 2 chains."""

    def __init__(self, spelling: str, dim: int = 8) -> None:
        super().__init__()
        self.f = nn.ModuleList(nn.Linear(dim, dim) for _ in range(3))
        self.spelling = spelling

    def forward(self, x):
        x = x + self.f[0](x)
        if self.spelling == "torch":
            x = torch.add(self.f[1](x), x, alpha=0.5)
        else:
            x = self.f[1](x).add(x, alpha=0.5)
        return x + self.f[2](x)


@pytest.mark.parametrize("spelling", ["torch", "method"])
def test_a_scaled_stream_is_no_site(spelling):
    torch.manual_seed(0)
    model = ScaledStream(spelling)
    x = torch.randn(4, 8)
    converted = assert_exact(model, x)
    report = mhc_fx.explain(converted)
    assert len(report.sites) == 2 and chains(report) == (1, 1), str(report)
    assert reasons(report) == [
        "the stream is scaled (`c * x + f(x)`, `torch.add(f(x), x, alpha=c)`): not a residual connection"
    ]
    assert report.skipped[0].where == {"torch": "(root) add#1", "method": "(root) add#2"}[spelling]


class InplaceForms(nn.Module):
    """``h.add_(b)`` where ``h`` cannot be rebound (an item of a list) or where another name still reads
    the old ``h``: neither is a site, each with its reason; the plain site after them still converts."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.f = nn.ModuleList(nn.Linear(dim, dim) for _ in range(3))

    def forward(self, x):
        hs = [x * 1]
        hs[0].add_(self.f[0](torch.relu(hs[0])))  # an item: cannot be rebound
        h = hs[0] * 1
        skip = h
        h.add_(self.f[1](torch.relu(h)))  # `skip` reads h after the add
        out = h * skip
        return out + self.f[2](out)


def test_inplace_add_that_cannot_be_rebound_is_skipped_with_its_reason():
    torch.manual_seed(0)
    model = InplaceForms()
    x = torch.randn(4, 8)
    converted = assert_exact(model, x)
    report = mhc_fx.explain(converted)
    assert len(report.sites) == 1 and chains(report) == (1,)
    got = reasons(report)
    assert any("in-place add on a value that another name reads later" in r for r in got), got
    assert any("only a local name, `h += b` or `h.add_(b)`, can be rebound" in r for r in got), got


class NotTensors(nn.Module):
    """``.add`` / ``.add_`` of objects that are not tensors keep their own meaning."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.f = nn.Linear(dim, dim)
        self.seen: set = set()

    def add(self, x):  # a module's own `add` method
        return x * 2

    def forward(self, x):
        self.seen.add("called")
        counter = _Counter()
        counter.add_(3)
        y = self.add(x) + counter.n
        return y + self.f(y)


class _Counter:
    def __init__(self) -> None:
        self.n = 0

    def add_(self, k):  # returns None, as many non-tensor `add_` do
        self.n += k


def test_add_methods_of_other_objects_keep_their_meaning():
    torch.manual_seed(0)
    model = NotTensors()
    x = torch.randn(4, 8)
    converted = assert_exact(model, x)
    assert converted.seen == {"called"}
    assert len(mhc_fx.explain(converted).sites) == 1


def test_show_rewrite_marks_the_new_spellings():
    model = mhc_fx.convert(MethodForms())
    marked = [
        line.split("→", 1)[1].strip() for line in str(mhc_fx.show_rewrite(model)).splitlines() if " → " in line[:8]
    ]
    assert len(marked) == 11
    assert marked[1] == "h = h.add(self.f[1](h))  # a.add(b)"
    assert marked[2].startswith("h.add_(self.f[2](torch.relu(h)))")
    texts = [text for *_, text in add_locations(MethodForms.forward)]
    assert texts[2] == "h.add_(self.f[2](torch.relu(h)))" and texts[-1] == "h.add_(self.f[10](torch.relu(h)))"
    assert count_adds(MethodForms.forward) == 11


# =====================================================================================================
# Class 7: private names, closures, decorators
# =====================================================================================================
class PrivateBlock(nn.Module):
    """A forward reading name-mangled attributes, a private method, a private class attribute and a
    private parameter: 2 sites."""

    __gain = 1.0

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.__f = nn.Linear(dim, dim)
        self.__g = nn.Linear(dim, dim)

    def __branch(self, x):
        return self.__g(torch.relu(x))

    def forward(self, x, __scale=1.0):
        __h = x + self.__f(x) * (self.__gain * __scale)
        return __h + self.__branch(__h)


class _LeadingUnderscore(PrivateBlock):
    """Python drops the class name's leading underscores: ``self.__w`` is ``self._LeadingUnderscore__w``."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__(dim)
        self.__w = nn.Linear(dim, dim)

    def forward(self, x):
        x = super().forward(x)
        return x + self.__w(x)


def test_private_names_are_mangled_like_python_does():
    torch.manual_seed(0)
    model = nn.Sequential(PrivateBlock(), PrivateBlock(), _LeadingUnderscore())
    x = torch.randn(4, 8)
    converted = assert_exact(model, x)
    report = mhc_fx.explain(converted)
    # the two PrivateBlocks (2 each), then the subclass: its super().forward's two adds (followed,
    # mangled with the parent's name) and its own add: one chain
    assert [s.module_path for s in report.sites] == ["0", "0", "1", "1", "2", "2", "2"]
    assert chains(report) == (7,), str(report)
    assert inspect.signature(converted[0].forward) == inspect.signature(model[0].forward)


class _Names:
    def method(self, x, __p=1, *, __k=2):
        import os.path as __os_path  # noqa: F401

        try:
            __y = self.__a + __p + __k
        except AttributeError as __e:
            __y = str(__e)

        def __inner(__z):
            return __z

        class __Nested:
            def m(self):
                return self.__b

        return [__i for __i in (__inner(__y), __Nested)]


def _all_names(code: types.CodeType) -> set[str]:
    names = {*code.co_names, *code.co_varnames, *code.co_freevars, *code.co_cellvars}
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _all_names(const)
    return {n for n in names if not n.startswith("__mhc_fx")}


def test_mangled_names_match_the_compiler():
    rewritten = rewrite_function(_Names.method, HELPERS)
    assert _all_names(rewritten.__code__) == _all_names(_Names.method.__code__)
    assert inspect.signature(rewritten) == inspect.signature(_Names.method)


def _closure_block():
    gain = 1.0

    class ClosureBlock(nn.Module):
        def __init__(self, dim: int = 8) -> None:
            super().__init__()
            self.f = nn.Linear(dim, dim)
            self.g = nn.Linear(dim, dim)

        def forward(self, x, *, out_gain=1.0):
            x = x + gain * self.f(x)
            return (x + self.g(x)) * out_gain

    def set_gain(value):
        nonlocal gain
        gain = value

    return ClosureBlock, set_gain


def test_closure_cells_are_shared_with_the_defining_scope():
    torch.manual_seed(0)
    block, set_gain = _closure_block()
    model = block()
    x = torch.randn(4, 8)
    converted = assert_exact(model, x)
    assert len(mhc_fx.explain(converted).sites) == 2
    assert inspect.signature(converted.forward) == inspect.signature(model.forward)
    before = converted(x)
    set_gain(3.0)  # after convert: the converted forward sees it, as the original does
    assert torch.equal(converted(x), model(x))
    assert not torch.equal(converted(x), before)


def test_a_closure_cell_still_empty_at_rewrite_time_is_read_when_called():
    def make():
        class Late(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.f = nn.Linear(8, 8)

            def forward(self, x, scale=lambda t: t / 2):  # a default: the original's object, not re-evaluated
                return x + act(scale(self.f(x)))

        rewritten = rewrite_function(Late.forward, HELPERS)  # `act` is not assigned yet
        assert rewritten.__defaults__[0] is Late.forward.__defaults__[0]

        def act(t):
            return t * 2

        return Late(), rewritten

    model, rewritten = make()
    x = torch.randn(2, 8)
    assert torch.equal(types.MethodType(rewritten, model)(x), model(x))


def _counting(fn):
    """A decorator with ``functools.wraps``."""

    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        wrapper.calls += 1
        return fn(self, *args, **kwargs)

    wrapper.calls = 0
    return wrapper


def _generic(fn):
    """A decorator without ``functools.wraps``: ``wrapper(*args, **kwargs)`` (fx cannot trace it)."""

    def wrapper(*args, **kwargs):
        wrapper.calls += 1
        return fn(*args, **kwargs)

    wrapper.calls = 0
    return wrapper


def _self_and_rest(fn):
    """A decorator without ``functools.wraps``: ``wrapper(self, *args, **kwargs)``."""

    def wrapper(self, *args, **kwargs):
        wrapper.calls += 1
        return fn(self, *args, **kwargs)

    wrapper.calls = 0
    return wrapper


def _with_self(fn):
    """A decorator without ``functools.wraps`` that names ``self`` and ``x``."""

    def wrapper(self, x):
        wrapper.calls += 1
        return fn(self, x)

    wrapper.calls = 0
    return wrapper


_REGISTRY: dict = {}


def _registered(fn):
    """A decorator without ``functools.wraps`` whose wrapper finds the function in a global registry."""
    name = fn.__qualname__
    _REGISTRY[name] = fn

    def wrapper(*args, **kwargs):
        return _REGISTRY[name](*args, **kwargs)

    return wrapper


def _doubling(fn):
    """A decorator without ``functools.wraps`` that changes the input: not a passthrough."""

    def wrapper(self, x):
        return fn(self, 2 * x)

    return wrapper


def _decorated(decorator):
    class Decorated(nn.Module):
        def __init__(self, dim: int = 8) -> None:
            super().__init__()
            self.f = nn.Linear(dim, dim)
            self.g = nn.Linear(dim, dim)

        @decorator
        def forward(self, x):
            x = x + self.f(x)
            return x + self.g(x)

    return Decorated


@pytest.mark.parametrize(
    "decorator",
    [_counting, _generic, _self_and_rest, _with_self],
    ids=["wraps", "generic", "self_and_rest", "with_self"],
)
def test_decorated_forward_converts_and_keeps_its_wrapper(decorator):
    torch.manual_seed(0)
    cls = _decorated(decorator)
    model = nn.Sequential(cls(), cls())
    x = torch.randn(4, 8)
    # fx cannot trace a forward that passes on `*args`: export captures those
    example = (x,) if decorator in (_generic, _self_and_rest) else None
    converted = assert_exact(model, x, example_inputs=example)
    report = mhc_fx.explain(converted)
    assert len(report.sites) == 4 and chains(report) == (4,), str(report)
    assert inspect.signature(converted[0].forward) == inspect.signature(model[0].forward)
    calls = cls.forward.calls
    converted(x)
    assert cls.forward.calls == calls + 2  # the wrapper still runs around the rewritten forward


def test_forward_behind_an_unfindable_wrapper_is_skipped_with_its_reason():
    torch.manual_seed(0)
    cls = _decorated(_registered)
    model = nn.Sequential(cls(), cls())
    x = torch.randn(4, 8)
    report = mhc_fx.explain(model, example_inputs=(x,))
    assert report.sites == [] and len(report.skipped) == 4, str(report)
    assert all("functools.wraps" in r and "could not rewrite" in r for r in reasons(report)), reasons(report)
    with pytest.warns(UserWarning, match="no residual site"):
        converted = mhc_fx.convert(model, example_inputs=(x,))
    assert torch.equal(converted(x), model(x))


def test_forward_behind_a_wrapper_that_changes_its_arguments_converts_through_its_call():
    # the wrapper cannot stand in for the forward, but its call of the wrapped function is a
    # followed helper call: the adds inside become sites that see the doubled input (a doubled
    # stream is a new stream, so each block is its own chain)
    torch.manual_seed(0)
    model = nn.Sequential(_decorated(_doubling)(), _decorated(_doubling)())
    x = torch.randn(4, 8)
    converted = assert_exact(model, x)
    report = mhc_fx.explain(converted)
    assert len(report.sites) == 4 and chains(report) == (2, 2), str(report)
    assert torch.equal(converted(x), model(x))
