"""VNN-LIB properties on the integer network (the VNN-COMP subset: box inputs, linear outputs).

Conventions (see docs/verify.md): ``X_i`` is the integer input code of the flattened input element
``i`` (row-major over ``net.input_shape``) and ``Y_j`` the integer logit ``j`` (what
``net.integer_forward`` returns). Input bounds must be integers (points on the input grid); they are
intersected with the network's input range, and an input without a bound takes the whole range.
The output assertions describe the *unsafe* region; the answer is ``sat`` (a counterexample exists,
re-checked with the reference executor), ``unsat`` (proven safe) or ``timeout``.

Supported: ``declare-const``, ``assert`` with ``<=``, ``>=``, ``<``, ``>``, ``and``, ``or`` over
``X``/``Y`` variables and numbers (integers, decimals, exponents), linear terms with ``+``, ``-``
and ``*`` by a constant. Input constraints must be bounds of single variables, at the top level or
in a top-level ``and``.

Everything is exact rational arithmetic, within limits checked before any work that could take long
(each is a :class:`VnnlibError` naming it): nesting at most :data:`MAX_DEPTH` parentheses deep,
numbers of at most :data:`MAX_DIGITS` significant digits with magnitude between 10**-MAX_EXPONENT
and 10**MAX_EXPONENT, constants of at most :data:`MAX_CONSTANT_BITS` bits while terms are combined,
at most :data:`MAX_DISJUNCTS` disjuncts. An output constraint is scaled to integer coefficients with
no common factor; a threshold beyond what the logits can reach on the input box is clamped to that
reach (exact: the constraint holds at the same points); the integer coefficients must then be at most
2**40 (:data:`~qcert.verify.spec.MAX_COEF`) and the threshold at most 2**50 in magnitude.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Union

import torch

from qcert.errors import VnnlibError
from qcert.quant.network import QNetwork
from qcert.runs import SAT, TIMEOUT, UNSAT
from qcert.verify.bab import BabOptions
from qcert.verify.query import DEFAULT_METHOD, check_method, check_timeout, verify_query
from qcert.verify.spec import MAX_COEF, OutputSpec

SExpr = Union[str, list["SExpr"]]  # noqa: UP007 (a recursive alias needs Union at runtime)
#: the most disjuncts a property may expand to (its output constraints in disjunctive normal form)
MAX_DISJUNCTS = 10_000
#: the deepest nesting of parentheses (VNN-COMP properties use 4)
MAX_DEPTH = 100
#: numbers: at most this many significant digits ...
MAX_DIGITS = 1000
#: ... and a magnitude between 10**-MAX_EXPONENT and 10**MAX_EXPONENT (or zero)
MAX_EXPONENT = 1000
#: the most bits of a numerator or denominator while terms are added and multiplied
MAX_CONSTANT_BITS = 20_000
#: the largest threshold of an integer output constraint (after clamping to the logits' reach)
MAX_THRESHOLD = MAX_COEF * 1024
_NUM = re.compile(r"^([+-]?)(\d*)(?:\.(\d*))?(?:[eE]([+-]?\d+))?$")
_VAR = re.compile(r"^([XY])_(\d{1,18})$")  # an index of more digits is no input/output


def _tokens(text: str) -> list[str]:
    text = re.sub(r";[^\n]*", " ", text)
    return text.replace("(", " ( ").replace(")", " ) ").split()


def parse_sexprs(text: str) -> list[SExpr]:
    """The top-level s-expressions of a text (comments ``;`` removed)."""
    toks = _tokens(text)
    out: list[SExpr] = []
    stack: list[list[SExpr]] = []
    for t in toks:
        if t == "(":
            if len(stack) >= MAX_DEPTH:
                raise VnnlibError(f"parentheses nest deeper than {MAX_DEPTH} levels (the limit)")
            stack.append([])
        elif t == ")":
            if not stack:
                raise VnnlibError("unbalanced parentheses: an extra ')'")
            done = stack.pop()
            (stack[-1] if stack else out).append(done)
        else:
            if not stack:
                raise VnnlibError(f"unexpected atom {t!r} outside parentheses")
            stack[-1].append(t)
    if stack:
        raise VnnlibError("unbalanced parentheses: a '(' is never closed")
    return out


def _number(tok: str) -> Fraction:
    """The exact value of a decimal number token, its size checked before it is built."""
    m = _NUM.match(tok)
    if not m or not (m.group(2) or m.group(3)):
        raise VnnlibError(f"not a number or declared variable: {_cut(tok)!r}")
    sign, whole, frac, exp = m.group(1), m.group(2), (m.group(3) or "").rstrip("0"), m.group(4)
    digits = (whole + frac).lstrip("0")
    if not digits:
        return Fraction(0)
    if len(digits) > MAX_DIGITS:
        raise VnnlibError(f"the number {_cut(tok)} has more than {MAX_DIGITS} digits (the limit)")
    e = 0
    if exp is not None:
        if len(exp.lstrip("+-").lstrip("0")) > len(str(MAX_EXPONENT)) + 1:
            raise VnnlibError(
                f"the number {_cut(tok)} is beyond 10**±{MAX_EXPONENT} (the limit of a number)"
            )
        e = int(exp)
    # the value is int(digits) · 10**(e − len(frac)); its leading digit is at 10**magnitude
    magnitude = e - len(frac) + len(digits) - 1
    if abs(magnitude) > MAX_EXPONENT:
        raise VnnlibError(
            f"the number {_cut(tok)} is beyond 10**±{MAX_EXPONENT} (the limit of a number)"
        )
    value = Fraction(int(digits)) * Fraction(10) ** (e - len(frac))
    return -value if sign == "-" else value


def _cut(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[:n] + "…"


def _check_size(q: Fraction, where: SExpr) -> Fraction:
    if max(q.numerator.bit_length(), q.denominator.bit_length()) > MAX_CONSTANT_BITS:
        raise VnnlibError(
            f"a constant of {_show(where)} needs more than {MAX_CONSTANT_BITS} bits (the limit)"
        )
    return q


Linear = tuple[dict[str, Fraction], Fraction]  # coefficients by variable, constant


def _linear(e: SExpr, declared: set[str]) -> Linear:
    if isinstance(e, str):
        if e in declared:
            return {e: Fraction(1)}, Fraction(0)
        if _VAR.match(e):
            raise VnnlibError(f"variable {e} is used but not declared")
        return {}, _number(e)
    if not e or not isinstance(e[0], str):
        raise VnnlibError(f"malformed term {_show(e)}")
    op, args = e[0], [_linear(a, declared) for a in e[1:]]
    out: Linear
    if op == "+" and args:
        out = _add(args)
    elif op == "-" and len(args) == 1:
        out = _scale(args[0], Fraction(-1))
    elif op == "-" and len(args) >= 2:
        out = _add([args[0], *[_scale(a, Fraction(-1)) for a in args[1:]]])
    elif op == "*" and len(args) == 2:
        (ca, ka), (cb, kb) = args
        if ca and cb:
            raise VnnlibError(f"non-linear product {_show(e)}")
        out = _scale((cb, kb), ka) if not ca else _scale((ca, ka), kb)
    else:
        raise VnnlibError(f"unsupported term {_show(e)}")
    for q in (*out[0].values(), out[1]):
        _check_size(q, e)
    return out


def _add(terms: list[Linear]) -> Linear:
    coefs: dict[str, Fraction] = {}
    const = Fraction(0)
    for c, k in terms:
        for v, a in c.items():
            coefs[v] = coefs.get(v, Fraction(0)) + a
        const += k
    return {v: a for v, a in coefs.items() if a != 0}, const


def _scale(t: Linear, f: Fraction) -> Linear:
    return {v: a * f for v, a in t[0].items() if a * f != 0}, t[1] * f


def _show(e: SExpr, limit: int = 200) -> str:
    """``e`` as text, cut after about ``limit`` characters."""
    if isinstance(e, str):
        return _cut(e, limit)
    parts: list[str] = []
    used = 0
    for a in e:
        if used > limit:
            parts.append("…")
            break
        parts.append(_show(a, limit - used))
        used += len(parts[-1]) + 1
    return "(" + " ".join(parts) + ")"


# an atom: (coefs over variables, op, rhs) meaning coefs·v op rhs
Atom = tuple[dict[str, Fraction], str, Fraction]


def _formula(e: SExpr, declared: set[str]) -> list[list[Atom]]:
    """A formula in disjunctive normal form: a list of conjunctions of atoms."""
    if isinstance(e, str) or not e or not isinstance(e[0], str):
        raise VnnlibError(f"malformed assertion {_show(e)}")
    op = e[0]
    if op in ("<=", ">=", "<", ">"):
        if len(e) != 3:
            raise VnnlibError(f"{op} needs two arguments in {_show(e)}")
        (ca, ka), (cb, kb) = _linear(e[1], declared), _linear(e[2], declared)
        coefs, const = _add([(ca, ka), _scale((cb, kb), Fraction(-1))])
        return [[(coefs, op, _check_size(-const, e))]]
    if op == "and":
        dnf: list[list[Atom]] = [[]]
        for a in e[1:]:
            dnf = _conjoin(dnf, _formula(a, declared))
        return dnf
    if op == "or":
        if len(e) < 2:
            raise VnnlibError("an empty (or) is unsatisfiable; not supported")
        out = [c for a in e[1:] for c in _formula(a, declared)]
        if len(out) > MAX_DISJUNCTS:
            raise VnnlibError(f"the property expands to more than {MAX_DISJUNCTS} disjuncts")
        return out
    raise VnnlibError(f"unsupported operator {op!r} in {_show(e)}")


def _conjoin(a: list[list[Atom]], b: list[list[Atom]]) -> list[list[Atom]]:
    """The conjunction of two formulas in DNF, refused before it is built when too large."""
    if len(a) * len(b) > MAX_DISJUNCTS:
        raise VnnlibError(f"the property expands to more than {MAX_DISJUNCTS} disjuncts")
    return [c + s for c in a for s in b]


@dataclass
class VnnlibProperty:
    """A parsed property: the integer input box and the unsafe output region."""

    lo: torch.Tensor  # int64 input_shape
    hi: torch.Tensor
    spec: OutputSpec


def parse_vnnlib(text: str, net: QNetwork) -> VnnlibProperty:
    """Parse VNN-LIB ``text`` against ``net`` (its input size and number of outputs)."""
    n_in = 1
    for s in net.input_shape:
        n_in *= s
    k = net.num_classes
    declared: set[str] = set()
    xs: set[int] = set()
    ys: set[int] = set()
    lo: list[Fraction | None] = [None] * n_in
    hi: list[Fraction | None] = [None] * n_in
    out_dnf: list[list[Atom]] = [[]]
    n_out_asserts = 0
    for cmd in parse_sexprs(text):
        if isinstance(cmd, str) or not cmd or not isinstance(cmd[0], str):
            raise VnnlibError(f"malformed command {_show(cmd)}")
        if cmd[0] == "declare-const":
            if len(cmd) != 3 or not isinstance(cmd[1], str) or cmd[2] not in ("Real", "Int"):
                raise VnnlibError(f"malformed declaration {_show(cmd)}")
            m = _VAR.match(cmd[1])
            if not m:
                raise VnnlibError(f"variables must be named X_i or Y_j, got {cmd[1]!r}")
            i = int(m.group(2))
            if m.group(1) == "X":
                if i >= n_in:
                    raise VnnlibError(f"{cmd[1]} declared, but the network has {n_in} inputs")
                xs.add(i)
            else:
                if i >= k:
                    raise VnnlibError(f"{cmd[1]} declared, but the network has {k} outputs")
                ys.add(i)
            declared.add(cmd[1])
        elif cmd[0] == "assert":
            if len(cmd) != 2:
                raise VnnlibError(f"assert takes one formula: {_show(cmd)}")
            dnf = _formula(cmd[1], declared)
            kinds = {v[0] for conj in dnf for atom in conj for v in atom[0]}
            if kinds == {"X"}:
                if len(dnf) != 1:
                    raise VnnlibError("disjunctions of input constraints are not supported")
                for coefs, op, rhs in dnf[0]:
                    _input_bound(coefs, op, rhs, lo, hi)
            elif kinds == {"Y"}:
                n_out_asserts += 1
                out_dnf = _conjoin(out_dnf, dnf)
            elif not kinds:
                raise VnnlibError(f"assertion without variables: {_show(cmd)}")
            else:
                raise VnnlibError(
                    f"an assertion mixes input and output variables: {_show(cmd)[:200]}"
                )
        else:
            raise VnnlibError(f"unsupported command {cmd[0]!r}")
    if xs != set(range(n_in)):
        raise VnnlibError(
            f"the file declares {len(xs)} X variables; the network has {n_in} inputs "
            "(declare X_0 .. X_{n-1})"
        )
    if ys != set(range(k)):
        raise VnnlibError(f"the file declares {len(ys)} Y variables; the network has {k} outputs")
    if not n_out_asserts:
        raise VnnlibError("the file has no output constraint (nothing to verify)")
    rlo, rhi = net.input_range
    box_lo, box_hi = [], []
    for i in range(n_in):
        a = rlo if lo[i] is None else max(rlo, int(lo[i]))  # type: ignore[arg-type]
        b = rhi if hi[i] is None else min(rhi, int(hi[i]))  # type: ignore[arg-type]
        if a > b:
            raise VnnlibError(f"the input box is empty at X_{i} ([{a}, {b}] in the input range)")
        box_lo.append(a)
        box_hi.append(b)
    shape = net.input_shape
    lo_t = torch.tensor(box_lo, dtype=torch.int64).view(shape)
    hi_t = torch.tensor(box_hi, dtype=torch.int64).view(shape)
    zlo, zhi = net.int_bounds(lo_t.unsqueeze(0), hi_t.unsqueeze(0))[-1]
    reach = list(zip(zlo[0].tolist(), zhi[0].tolist()))
    rows: list[list[int]] = []
    thresholds: list[int] = []
    group: list[int] = []
    for d, conj in enumerate(out_dnf):
        for coefs, op, t in conj or [({}, ">=", Fraction(0))]:  # (and) with nothing: always true
            vec = [Fraction(0)] * k
            for v, coef in coefs.items():
                vec[int(v[2:])] = coef
            row, threshold = _integer_row(vec, op, t, reach)
            rows.append(row)
            thresholds.append(threshold)
            group.append(d)
    spec = OutputSpec(
        torch.tensor(rows, dtype=torch.int64).view(len(rows), k),
        torch.tensor(thresholds, dtype=torch.int64),
        torch.tensor(group, dtype=torch.int64),
        len(out_dnf),
    )
    return VnnlibProperty(lo_t, hi_t, spec)


def _integer_row(
    coefs: list[Fraction], op: str, t: Fraction, reach: list[tuple[int, int]]
) -> tuple[list[int], int]:
    """``coefs · z  op  t`` (rational) as ``a · z >= b`` with integers ``a`` (no common factor)
    and ``b``, for integer logits ``z`` with ``reach[j]`` the range of ``z_j`` on the input box.
    Exact: ``a · z > s`` is ``a · z >= floor(s) + 1``; ``b`` is clamped to ``[L, U + 1]``, where
    ``[L, U]`` is the range of ``a · z`` over ``reach`` (below ``L`` it always holds, above ``U``
    never, as at ``L`` and ``U + 1``). Raises :class:`VnnlibError` beyond the limits."""
    if op in ("<=", "<"):
        coefs, t, op = [-c for c in coefs], -t, (">=" if op == "<=" else ">")
    den = math.lcm(*(c.denominator for c in [*coefs, t]))
    a = [int(c * den) for c in coefs]
    s = t * den
    b = -((-s.numerator) // s.denominator) if op == ">=" else s.numerator // s.denominator + 1
    g = math.gcd(*a)
    if g > 1:  # a · z is a multiple of g: a · z >= b iff (a/g) · z >= ceil(b/g)
        a, b = [x // g for x in a], -((-b) // g)
    low = sum(min(x * lo, x * hi) for x, (lo, hi) in zip(a, reach))
    high = sum(max(x * lo, x * hi) for x, (lo, hi) in zip(a, reach))
    b = min(max(b, low), high + 1)
    big = max((abs(x) for x in a), default=0)
    if big > MAX_COEF:
        raise VnnlibError(
            f"an output constraint needs an integer coefficient of about 2**{big.bit_length() - 1} "
            f"once scaled to integers with no common factor; the limit is 2**40 (the ratio of its "
            f"largest to its smallest coefficient, times their denominators, is too large)"
        )
    if abs(b) > MAX_THRESHOLD:
        raise VnnlibError(
            f"an output constraint's threshold is about 2**{abs(b).bit_length() - 1} once scaled "
            f"to integers, within the logits' reach; the limit is 2**50"
        )
    return a, b


def _input_bound(
    coefs: dict[str, Fraction],
    op: str,
    rhs: Fraction,
    lo: list[Fraction | None],
    hi: list[Fraction | None],
) -> None:
    if len(coefs) != 1:
        raise VnnlibError("input constraints must bound single variables (a box)")
    ((v, a),) = coefs.items()
    bound = rhs / a
    if bound.denominator != 1:
        raise VnnlibError(
            f"input bound {_cut(str(bound))} of {v} is off the integer input grid "
            "(X values are integer input codes)"
        )
    upper = (op in ("<=", "<")) == (a > 0)
    b = int(bound)
    if op in ("<", ">"):
        b = b - 1 if upper else b + 1
    i = int(v[2:])
    if upper:
        hi[i] = b if hi[i] is None else min(hi[i], b)  # type: ignore[type-var,assignment]
    else:
        lo[i] = b if lo[i] is None else max(lo[i], b)  # type: ignore[type-var,assignment]


@dataclass
class VnnlibResult:
    """``result``: ``sat``, ``unsat`` or ``timeout``; for ``sat`` the integer input and logits;
    ``decided_by``: what decided (``bab`` or ``milp``)."""

    result: str
    seconds: float
    inputs: list[int] | None = None
    outputs: list[int] | None = None
    note: str = ""
    decided_by: str = ""

    def vnncomp(self) -> str:
        """The VNN-COMP result text: the verdict line, then ``((X_0 v) ... (Y_0 v) ...)``."""
        if self.result != SAT or self.inputs is None or self.outputs is None:
            return self.result + "\n"
        parts = [f"(X_{i} {v})" for i, v in enumerate(self.inputs)]
        parts += [f"(Y_{j} {v})" for j, v in enumerate(self.outputs)]
        return "sat\n(" + "\n ".join(parts) + ")\n"


def verify_vnnlib(
    net: QNetwork,
    source: str | Path,
    *,
    timeout: float = 20.0,
    method: str = DEFAULT_METHOD,
    options: BabOptions | None = None,
) -> VnnlibResult:
    """Decide a VNN-LIB property (a path or the text itself) on ``net`` with ``method`` (see
    :func:`~qcert.verify.query.verify_query`, which dataset mode calls too): ``sat`` with a
    counterexample re-checked by ``net.integer_forward``, ``unsat`` (proof), or ``timeout``."""
    method = check_method(method)
    timeout = check_timeout(timeout)
    t0 = time.monotonic()
    if isinstance(source, Path) or (isinstance(source, str) and "(" not in source):
        path = Path(source)
        if not path.is_file():
            raise VnnlibError(f"no VNN-LIB file at {path}")
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            raise VnnlibError(f"{path} is not a text file") from None
    else:
        text = str(source)
    prop = parse_vnnlib(text, net)
    remaining = max(1e-3, timeout - (time.monotonic() - t0))
    x0 = torch.div(prop.lo + prop.hi, 2, rounding_mode="floor")
    res = verify_query(
        net, prop.lo, prop.hi, prop.spec, method=method, timeout=remaining, options=options, x0=x0
    )
    seconds = time.monotonic() - t0
    note = res.outcome.note
    if res.proven:
        return VnnlibResult(UNSAT, seconds, note=note, decided_by=res.decided_by)
    x = res.counterexample
    if x is not None:  # re-checked by verify_query: inside the box, logits in the unsafe region
        z = net.integer_forward(x)
        inputs = [int(v) for v in x.reshape(-1).tolist()]
        return VnnlibResult(
            SAT, seconds, inputs, [int(v) for v in z[0].tolist()], note, res.decided_by
        )
    return VnnlibResult(TIMEOUT, seconds, note=note, decided_by=res.decided_by)
