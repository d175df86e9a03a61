"""Where a template reads a person's own words: the proof the rendering fast path (`campaign.notices.fastpath`)
stands on (issue 26).

A message depends on a few values that are few across an audience (the wave, the template folder, the reader's
locale and zone, their devices' models and times) and on three that are one person's own: `account.name`,
`account.email` and each `device.name`. When a template only ever *prints* those three — `{{ account.name }}`,
nothing done to them, nothing decided by them, nothing capturing the output they land in — the message is the same
text for everyone with the same few values, the person's words spliced in where they are printed. This module reads
the compiled template (and everything it extends, includes and imports) and says whether that holds; when it
cannot prove it, it names the first reason and the caller renders every message in full, as always.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import jinja2
from jinja2 import nodes

# Names that hold a person's data or can reach it (blocks through `self`, loop neighbours through `loop`).
PERSON = frozenset({"account", "devices"})
RESERVED = PERSON | {"loop", "self", "super", "lipsum"}
ACCOUNT_ENUMERABLE = frozenset({"locale", "timezone"})  # part of the fast path's key
ACCOUNT_WORDS = frozenset({"name", "email"})
DEVICE_ENUMERABLE = frozenset({"model", "changed_at"})
DEVICE_WORDS = frozenset({"name"})
# What a template may read of `loop` (never its items: `previtem`, `nextitem`, iterating it).
LOOP_SAFE = frozenset({"index", "index0", "revindex", "revindex0", "first", "last", "length", "depth", "depth0",
                       "cycle", "changed"})
# Calls whose answer changes from one render to the next: the full render would differ from a cached one.
UNSTABLE = frozenset({"now", "today", "utcnow", "fromtimestamp", "utcfromtimestamp"})
STEPPING = UNSTABLE | {"previtem", "nextitem"}  # names that, as strings, reach those by `attr` or `[...]`
CAPTURES = (nodes.Macro, nodes.CallBlock, nodes.FilterBlock, nodes.AssignBlock)


class Refused(Exception):
    """The template does something with a person's words that the fast path cannot prove equal to the full
    render; the message says what and where."""


@dataclass
class _Scope:
    devices: frozenset[str] = frozenset()  # loop variables that are one of the person's devices
    capture: bool = False  # inside a macro, call block, filter block or `{% set %}…{% endset %}`
    imported: bool = False  # a template imported for its macros: no person's words at all


@dataclass
class _Walk:
    env: jinja2.Environment
    seen: set[tuple[str, bool]] = field(default_factory=set)

    def template(self, name: str, scope: _Scope) -> None:
        if (name, scope.imported) in self.seen:
            return
        self.seen.add((name, scope.imported))
        loader = self.env.loader
        assert loader is not None
        try:
            source, filename, _ = loader.get_source(self.env, name)
            tree = self.env.parse(source, name, filename)
        except jinja2.TemplateError as exc:  # the full render reports it, with its file and line
            raise Refused(f"{name}: {type(exc).__name__}") from None
        self.body(tree.body, name, _Scope(imported=scope.imported))

    def body(self, body: list[nodes.Node], name: str, scope: _Scope) -> None:
        for node in body:
            self.node(node, name, scope)

    def node(self, node: nodes.Node, name: str, scope: _Scope) -> None:
        where = f"{name}:{node.lineno}"
        if isinstance(node, nodes.Output):
            for printed in node.nodes:
                if self.printed(printed, scope):
                    if scope.capture:
                        raise Refused(f"{where}: a person's words printed where the output is captured")
                    if scope.imported:
                        raise Refused(f"{where}: a person's words in an imported template")
                else:
                    self.expr(printed, name, scope)
        elif isinstance(node, nodes.For):
            self.for_loop(node, name, scope)
        elif isinstance(node, CAPTURES):
            for child in node.iter_child_nodes(exclude=("body",)):
                self.node(child, name, scope)
            if isinstance(node, nodes.Macro | nodes.CallBlock):
                self.stores(node.args, where, scope)
            inner = _Scope(scope.devices, True, scope.imported)
            self.body(node.body, name, inner)
        elif isinstance(node, nodes.Block):
            if node.scoped or scope.devices or scope.capture or scope.imported:
                raise Refused(f"{where}: block {node.name!r} inside a loop, a capture or an import, or scoped")
            self.body(node.body, name, _Scope())
        elif isinstance(node, nodes.Include | nodes.Extends | nodes.Import | nodes.FromImport):
            self.linked(node, name, scope)
        elif isinstance(node, nodes.Assign | nodes.With):
            targets: Sequence[nodes.Node] = [node.target] if isinstance(node, nodes.Assign) else node.targets
            self.stores(targets, where, scope)
            for child in node.iter_child_nodes(exclude=("target", "targets")):
                self.node(child, name, scope)
        elif isinstance(node, nodes.Expr):
            self.expr(node, name, scope)
        else:  # If, ScopedEvalContextModifier, TemplateData, ...: their parts, as they are
            for child in node.iter_child_nodes():
                self.node(child, name, scope)

    def printed(self, expr: nodes.Node, scope: _Scope) -> bool:
        """Whether `expr`, printed as it is, is a person's words (`account.name`, `device.name`) or a parent
        block (`super()`, which is text the walk reads where it is written)."""
        if isinstance(expr, nodes.Getattr) and isinstance(expr.node, nodes.Name):
            base = expr.node.name
            return ((base == "account" and expr.attr in ACCOUNT_WORDS)
                    or (base in scope.devices and expr.attr in DEVICE_WORDS))
        return (isinstance(expr, nodes.Call) and isinstance(expr.node, nodes.Name) and expr.node.name == "super"
                and not (expr.args or expr.kwargs or expr.dyn_args or expr.dyn_kwargs))

    def for_loop(self, node: nodes.For, name: str, scope: _Scope) -> None:
        where = f"{name}:{node.lineno}"
        over_devices = isinstance(node.iter, nodes.Name) and node.iter.name == "devices"
        self.stores([node.target], where, scope)
        if over_devices:
            if not isinstance(node.target, nodes.Name) or node.test is not None or node.recursive:
                raise Refused(f"{where}: a loop over devices that filters, unpacks or recurses")
            inner = _Scope(scope.devices | {node.target.name}, scope.capture, scope.imported)
        else:
            self.expr(node.iter, name, scope)
            inner = scope
            if node.test is not None:
                self.expr(node.test, name, scope)
        self.body(node.body, name, inner)
        self.body(node.else_, name, scope)

    def stores(self, targets: Sequence[nodes.Node], where: str, scope: _Scope) -> None:
        for target in targets:
            for store in [target, *target.find_all(nodes.Name)]:
                if isinstance(store, nodes.Name) and store.ctx in ("store", "param") and (
                        store.name in RESERVED or store.name in scope.devices):
                    raise Refused(f"{where}: assigns {store.name!r}")
            if not isinstance(target, nodes.Name):
                for part in target.iter_child_nodes():
                    if not isinstance(part, nodes.Name):
                        self.expr(part, where.rsplit(":", 1)[0], scope)

    def linked(self, node: nodes.Include | nodes.Extends | nodes.Import | nodes.FromImport, name: str,
               scope: _Scope) -> None:
        where = f"{name}:{node.lineno}"
        if not (isinstance(node.template, nodes.Const) and isinstance(node.template.value, str)):
            raise Refused(f"{where}: a template named by an expression")
        other = node.template.value
        if isinstance(node, nodes.Include):
            if scope.capture or scope.devices or scope.imported or node.ignore_missing:
                raise Refused(f"{where}: include inside a capture, a device loop or an import, or ignore missing")
            self.template(other, _Scope())
        elif isinstance(node, nodes.Extends):
            if scope.imported:
                raise Refused(f"{where}: an imported template that extends another")
            self.template(other, _Scope())
        else:
            names = [node.target] if isinstance(node, nodes.Import) else [
                n[1] if isinstance(n, tuple) else n for n in node.names]
            if any(n in RESERVED or n in scope.devices for n in names):
                raise Refused(f"{where}: imports as a reserved name")
            self.template(other, _Scope(imported=True))

    def expr(self, expr: nodes.Node, name: str, scope: _Scope) -> None:
        where = f"{name}:{expr.lineno}"
        if isinstance(expr, nodes.Const) and isinstance(expr.value, str) and expr.value in STEPPING:
            raise Refused(f"{where}: {expr.value!r} (as an attribute: a value that changes between renders)")
        if isinstance(expr, nodes.Name):
            if expr.name in RESERVED or expr.name in scope.devices:
                raise Refused(f"{where}: {expr.name!r} used other than through a field the fast path knows")
            return
        if isinstance(expr, nodes.Getattr):
            if expr.attr in UNSTABLE or expr.attr in ("previtem", "nextitem"):
                raise Refused(f"{where}: .{expr.attr}")
            if isinstance(expr.node, nodes.Name):
                base = expr.node.name
                if base == "account":
                    if expr.attr not in ACCOUNT_ENUMERABLE:
                        raise Refused(f"{where}: account.{expr.attr} used other than printed as it is")
                    return
                if base in scope.devices:
                    if expr.attr not in DEVICE_ENUMERABLE:
                        raise Refused(f"{where}: {base}.{expr.attr} used other than printed as it is")
                    return
                if base == "loop":
                    if expr.attr not in LOOP_SAFE:
                        raise Refused(f"{where}: loop.{expr.attr}")
                    return
        elif isinstance(expr, nodes.Filter | nodes.Test):
            if expr.name == "random":
                raise Refused(f"{where}: |random")
            if (isinstance(expr, nodes.Filter) and isinstance(expr.node, nodes.Name) and expr.node.name == "devices"
                    and expr.name in ("length", "count") and not (expr.args or expr.kwargs)):
                return
        elif isinstance(expr, nodes.Call) and isinstance(expr.node, nodes.Name) and expr.node.name == "super":
            raise Refused(f"{where}: super() used other than printed")
        for child in expr.iter_child_nodes():
            self.expr(child, name, scope)


def refusal(env: jinja2.Environment, name: str) -> str | None:
    """Why the template `name` (with what it extends, includes and imports) may not take the fast path, or None
    when every use of a person's words in it is a plain `{{ … }}`."""
    try:
        _Walk(env).template(name, _Scope())
    except Refused as exc:
        return str(exc)
    return None
