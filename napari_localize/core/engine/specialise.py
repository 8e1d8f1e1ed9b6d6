"""Compile-time specialisation of engine functions for one (PSF model, noise model) pair.

The engine is written once with runtime integer switches (``model``, ``noise``), which the CUDA driver keeps.
For the CPU, :func:`specialised` makes a twin of an engine function in which the switch parameters are
constants: it rewrites the function's syntax tree, replacing every read of ``model``/``noise`` by the pair's
value and folding the comparisons with the module's model constants (``model == MODEL_MULTI`` becomes
``False``), so Python's compiler drops the other models' branches before numba sees the code. The engine
functions the twin calls with a switch are replaced by their own twins, recursively. numba then types and
optimises only the code of one model and one noise model: a smaller, faster kernel that compiles in a
fraction of the time, and no per-pixel calls of unused branches.

The twins keep the original's file, line numbers, module globals and parameter list (the switch parameters
stay, unused), so callers and tracebacks are unchanged, and numba's cache sees the original file (its stamp
covers ``core/engine/`` through :mod:`._cache`). A twin's qualified name carries the pair, so two pairs never
share a cache entry.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
import threading
import types

from numba.extending import register_jitable

#: parameter names that are the engine's switches
SWITCHES = ("model", "noise")
#: engine functions called once per pixel: their twins are inlined by LLVM (``forceinline``: typed and lowered
#: once, then inlined into every caller), so a pixel costs no call and, once inlined, LLVM and numba's
#: reference-count pruning drop the array arguments' reference counting (~14 atomic updates per pixel
#: otherwise). numba's own IR inlining (``inline="always"``) gives the same code, bit for bit and as fast, but
#: types and lowers the callee again at every call site: 25-40 % more compile time per kernel
PER_PIXEL = frozenset({"expected", "variance", "pixel", "_pixel_multi", "_spline_pixel", "_accumulate"})
_ENGINE_PACKAGE = __name__.rsplit(".", 1)[0]
_TWINS: dict = {}
_LOCK = threading.RLock()


def _int_value(node, env, glb):
    # the int a node stands for at specialisation time, or None
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.Name) and node.id not in env:
        v = glb.get(node.id)
        if type(v) is int:
            return v
    return None


class _Fold(ast.NodeTransformer):
    """Switch reads -> constants; ``==``/``!=`` between ints known now -> bool constants; ``and``/``or`` of
    constants folded."""

    def __init__(self, values: dict, glb: dict, local_names: set):
        self.values = values
        self.glb = glb
        self.local_names = local_names

    def visit_Name(self, node):
        if node.id in self.values:
            if not isinstance(node.ctx, ast.Load):
                raise ValueError(f"an engine function assigns its switch {node.id!r}: cannot specialise it")
            return ast.copy_location(ast.Constant(self.values[node.id]), node)
        return node

    def visit_Compare(self, node):
        node = self.generic_visit(node)
        if len(node.ops) == 1 and isinstance(node.ops[0], (ast.Eq, ast.NotEq)):
            a = _int_value(node.left, self.local_names, self.glb)
            b = _int_value(node.comparators[0], self.local_names, self.glb)
            if a is not None and b is not None:
                same = a == b
                return ast.copy_location(ast.Constant(same if isinstance(node.ops[0], ast.Eq) else not same), node)
        return node

    def visit_BoolOp(self, node):
        node = self.generic_visit(node)
        is_or = isinstance(node.op, ast.Or)
        kept = []
        for v in node.values:
            if isinstance(v, ast.Constant) and isinstance(v.value, bool):
                if v.value == is_or:  # True in an or, False in an and: decides the whole expression
                    return ast.copy_location(ast.Constant(is_or), node)
                continue  # False in an or, True in an and: drops out
            kept.append(v)
        if not kept:
            return ast.copy_location(ast.Constant(not is_or), node)
        if len(kept) == 1:
            return kept[0]
        node.values = kept
        return node

    def visit_UnaryOp(self, node):
        node = self.generic_visit(node)
        if isinstance(node.op, ast.Not) and isinstance(node.operand, ast.Constant):
            return ast.copy_location(ast.Constant(not node.operand.value), node)
        return node


def _switch_params(fn) -> tuple:
    if not isinstance(fn, types.FunctionType):
        return ()
    names = fn.__code__.co_varnames[: fn.__code__.co_argcount]
    return tuple(s for s in SWITCHES if s in names)


def _is_engine_function(fn) -> bool:
    return isinstance(fn, types.FunctionType) and (fn.__module__ or "").startswith(_ENGINE_PACKAGE + ".")


_REACHES: dict = {}


def _called_engine_functions(fn):
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except OSError:  # no source: it cannot be twinned anyway
        return []
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    return [(name, fn.__globals__[name]) for name in sorted(names)
            if name in fn.__globals__ and fn.__globals__[name] is not fn
            and _is_engine_function(fn.__globals__[name])]


def _needs_twin(fn) -> bool:
    """Whether ``fn`` is an engine function with a switch, is called per pixel, or calls (transitively) one."""
    if not _is_engine_function(fn):
        return False
    hit = _REACHES.get(fn)
    if hit is None:
        _REACHES[fn] = False  # recursion guard
        hit = bool(_switch_params(fn)) or fn.__name__ in PER_PIXEL or any(
            _needs_twin(c) for _, c in _called_engine_functions(fn))
        _REACHES[fn] = hit
    return hit


def _suffix(values: dict) -> str:
    return "__" + "_".join(f"{k}{v}" for k, v in sorted(values.items()))


def specialised(fn, model: int, noise: int, jit=register_jitable):
    """The twin of engine function ``fn`` for ``(model, noise)``, wrapped by ``jit`` (``register_jitable`` for
    a callee; the CPU driver passes ``njit(...)`` for its kernel). ``fn`` without switch parameters and
    functions from outside the engine are returned as they are."""
    with _LOCK:
        if not _needs_twin(fn):
            return fn
    params = _switch_params(fn)
    values = {k: int(v) for k, v in (("model", model), ("noise", noise)) if k in params}
    key = (fn, tuple(sorted(values.items())), jit)
    with _LOCK:
        twin = _TWINS.get(key)
        if twin is None:
            if fn.__name__ in PER_PIXEL and jit is register_jitable:
                jit = register_jitable(forceinline=True)
            try:
                twin = _make_twin(fn, values, int(model), int(noise), jit)
            except OSError:  # no source to read (a frozen install): the generic function, slower, same results
                twin = fn if jit is register_jitable or fn.__name__ in PER_PIXEL else jit(fn)
            _TWINS[key] = twin
    return twin


def _passthrough_callees(names, calls, glb, local_names, values) -> set:
    """Names of the engine functions that a function (its ``ast.Name`` nodes ``names`` and ``ast.Call`` nodes
    ``calls``) may call through their twins: every call passes each of the callee's switches on unchanged (the
    caller's own switch parameter). A call with another value (say ``n_params(MODEL_MULTI, aux)``) keeps the
    generic callee."""
    ok, bad = set(), set()
    for node in names:
        if node.id in local_names or node.id not in glb:
            continue
        if _is_engine_function(glb[node.id]):
            ok.add(node.id)
    for node in calls:
        if isinstance(node.func, ast.Name) and node.func.id in ok:
            callee = glb[node.func.id]
            arg_names = callee.__code__.co_varnames[: callee.__code__.co_argcount]
            for sw in _switch_params(callee):
                pos = arg_names.index(sw)
                arg = node.args[pos] if pos < len(node.args) else next(
                    (k.value for k in node.keywords if k.arg == sw), None)
                if not (isinstance(arg, ast.Name) and arg.id == sw and sw in values):
                    bad.add(node.func.id)
    # a name used other than as the function of a call (passed on, stored) keeps the generic function too
    called = {id(n.func) for n in calls}
    for node in names:
        if node.id in ok and id(node) not in called:
            bad.add(node.id)
    return ok - bad


def _make_twin(fn, values, model, noise, jit):
    src = textwrap.dedent(inspect.getsource(fn))
    tree = ast.parse(src)
    fdef = tree.body[0]
    if not isinstance(fdef, ast.FunctionDef):
        raise TypeError(f"cannot specialise {fn.__qualname__}: not a plain function definition")
    fdef.decorator_list = []
    glb = fn.__globals__
    names, calls = [], []  # one walk of the tree
    for node in ast.walk(fdef):
        if isinstance(node, ast.Name):
            names.append(node)
        elif isinstance(node, ast.Call):
            calls.append(node)
    local_names = {a.arg for a in fdef.args.args} - set(values)
    local_names.update(n.id for n in names if isinstance(n.ctx, ast.Store))
    passthrough = _passthrough_callees(names, calls, glb, local_names, values)
    fdef = _Fold(values, glb, local_names).visit(fdef)
    fdef.name = fn.__name__ + (_suffix(values) if values else "__twin")
    ast.fix_missing_locations(fdef)
    ast.increment_lineno(tree, fn.__code__.co_firstlineno - 1)
    # the twin's namespace: the module's, with every switch-taking engine function it calls replaced by its twin
    namespace = dict(glb)
    for node in ast.walk(fdef):  # the folded tree: callees of dropped branches (other models) get no twin
        if isinstance(node, ast.Name) and node.id not in local_names and node.id in glb:
            callee = glb[node.id]
            if callee is not fn and _needs_twin(callee) and node.id in passthrough:
                namespace[node.id] = specialised(callee, model, noise)
    code = compile(tree, inspect.getsourcefile(fn) or fn.__code__.co_filename, "exec")
    exec(code, namespace)
    twin = namespace[fdef.name]
    twin.__qualname__ = fn.__qualname__ + (_suffix(values) if values else "__twin")
    twin.__module__ = fn.__module__
    twin.__doc__ = fn.__doc__
    return jit(twin)
