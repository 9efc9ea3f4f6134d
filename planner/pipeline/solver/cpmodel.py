"""A small CP-SAT model builder and solver front end: the part of `ortools.sat.python.cp_model`'s
interface pciplan uses (integer and Boolean variables, linear constraints with enforcement literals,
a linear objective, hints, assumptions), written for start-up speed.

OR-Tools' own Python layer imports numpy and pandas (about 0.3 s on every run) although pciplan uses
neither. This module talks to the solver's native entry point only: the model is written as a
CpModelProto in protobuf text format and parsed by the native library where `cp_model_helper` has
native protos (OR-Tools 9.15, as installed here), or built through the generated protobuf classes and
solved by the older helper's SolveWrapper (`swig_helper` in 9.10, the floor; both tested).

Linear expressions are written the way OR-Tools 9.15's builder writes them (terms merged, zero
coefficients dropped, variables by index, constants moved into the domain), so the solver sees the
same model as before (tests/test_cpmodel.py compares the two builders on the test guests).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from typing import Any

INT_MIN = -(1 << 63)
INT_MAX = (1 << 63) - 1

UNKNOWN, MODEL_INVALID, FEASIBLE, INFEASIBLE, OPTIMAL = 0, 1, 2, 3, 4
STATUS_NAMES = {UNKNOWN: "UNKNOWN", MODEL_INVALID: "MODEL_INVALID", FEASIBLE: "FEASIBLE",
                INFEASIBLE: "INFEASIBLE", OPTIMAL: "OPTIMAL"}


def _terms(x: Any) -> tuple[dict[int, int], int]:
    """(variable index -> coefficient, constant) of an expression, a variable or an integer."""
    if isinstance(x, IntVar):
        return {x._index: 1}, 0
    if isinstance(x, LinearExpr):
        return x._terms, x._const
    if isinstance(x, int):  # bool too
        return {}, int(x)
    raise TypeError(f"not a linear expression: {x!r}")


class LinearExpr:
    """coefficients · variables + constant: the operators shared by expressions and variables. Immutable
    once built. (Expressions and variables are siblings, not one a subclass of the other: Python would
    otherwise try a variable's reflected comparison first, and `3 - x >= y` would be written as
    `y + x <= 3`, a model OR-Tools does not write.)"""

    __slots__ = ()
    _terms: dict[int, int]
    _const: int

    @staticmethod
    def Sum(items: Iterable[Any]) -> LinearExpr:  # noqa: N802 (OR-Tools' name)
        terms: dict[int, int] = {}
        const = 0
        get = terms.get
        constant = True
        for x in items:
            if isinstance(x, IntVar):
                i = x._index
                terms[i] = get(i, 0) + 1
                constant = False
            elif isinstance(x, LinearExpr):
                for i, c in x._terms.items():
                    terms[i] = get(i, 0) + c
                const += x._const
                constant = constant and isinstance(x, _ConstantSum)
            else:
                const += int(x)
        return _ConstantSum(terms, const) if constant else _Linear(terms, const)

    def _combine(self, other: Any, sign: int) -> LinearExpr:
        t, c = _terms(other)
        mine, const = _terms(self)
        out = dict(mine)
        get = out.get
        for i, k in t.items():
            out[i] = get(i, 0) + sign * k
        return _Linear(out, const + sign * c)

    def __add__(self, other: Any) -> LinearExpr:
        return self._combine(other, 1)

    __radd__ = __add__

    def __sub__(self, other: Any) -> LinearExpr:
        return self._combine(other, -1)

    def __rsub__(self, other: Any) -> LinearExpr:
        return (-self)._combine(other, 1)

    def __mul__(self, k: Any) -> LinearExpr:
        if not isinstance(k, int):
            return NotImplemented
        t, c = _terms(self)
        return _Linear({i: k * v for i, v in t.items()}, k * c)

    __rmul__ = __mul__

    def __neg__(self) -> LinearExpr:
        return self * -1

    def _bounded(self, other: Any, lb: int, ub: int) -> BoundedLinearExpression:
        if isinstance(self, _ConstantSum) and isinstance(other, LinearExpr):
            # OR-Tools compares a sum of constants with an expression from the expression's side
            return other._bounded(self, -ub if ub != INT_MAX else INT_MIN, -lb if lb != INT_MIN else INT_MAX)
        diff = self._combine(other, -1)
        return BoundedLinearExpression(diff, lb, ub, self, other)

    def __le__(self, other: Any) -> BoundedLinearExpression:
        return self._bounded(other, INT_MIN, 0)

    def __ge__(self, other: Any) -> BoundedLinearExpression:
        return self._bounded(other, 0, INT_MAX)

    def __eq__(self, other: Any) -> BoundedLinearExpression:  # type: ignore[override]
        return self._bounded(other, 0, 0)

    def __ne__(self, other: Any) -> BoundedLinearExpression:  # type: ignore[override]
        return self._bounded(other, 0, 0)._negate()

    __hash__ = object.__hash__


class _Linear(LinearExpr):
    __slots__ = ("_terms", "_const")

    def __init__(self, terms: dict[int, int], const: int = 0):
        self._terms = terms
        self._const = const


class _ConstantSum(_Linear):
    """LinearExpr.Sum of constants only (OR-Tools keeps it a node of its own, see _bounded)."""

    __slots__ = ()


class IntVar(LinearExpr):
    """A variable of the model; also a literal when its domain is [0, 1]."""

    __slots__ = ("_index", "_name", "_model")

    def __init__(self, model: CpModel, index: int, name: str):
        self._model = model
        self._index = index
        self._name = name

    @property
    def _terms(self) -> dict[int, int]:  # type: ignore[override]
        return {self._index: 1}

    @property
    def _const(self) -> int:  # type: ignore[override]
        return 0

    __hash__ = object.__hash__

    def Index(self) -> int:  # noqa: N802
        return self._index

    def Name(self) -> str:  # noqa: N802
        return self._name

    def Not(self) -> _NotVar:  # noqa: N802
        return _NotVar(self)

    def __repr__(self) -> str:
        return self._name or f"v{self._index}"


class _NotVar:
    """The negation of a Boolean variable, as an enforcement literal or assumption."""

    __slots__ = ("_var",)

    def __init__(self, var: IntVar):
        self._var = var

    def Index(self) -> int:  # noqa: N802
        return -self._var._index - 1

    def Not(self) -> IntVar:  # noqa: N802
        return self._var


class BoundedLinearExpression:
    """expr ∈ domain (pairs of bounds), from a comparison; Add turns it into a constraint."""

    __slots__ = ("expr", "domain", "_left", "_right")

    def __init__(self, expr: LinearExpr, lb: int, ub: int, left: Any = None, right: Any = None):
        self.expr = expr
        self.domain = [lb, ub]
        self._left, self._right = left, right

    def _negate(self) -> BoundedLinearExpression:
        lb = self.domain[0]
        self.domain = [INT_MIN, lb - 1, lb + 1, INT_MAX]
        return self

    def __bool__(self) -> bool:
        # `x == y` between two variables is also an identity test (as in OR-Tools), so that
        # `var in list` works; anything else has no truth value.
        if isinstance(self._left, IntVar) and isinstance(self._right, IntVar):
            same = self._left is self._right
            return same if self.domain == [0, 0] else not same
        raise TypeError("a linear constraint has no truth value; pass it to CpModel.Add")


def _index(lit: Any) -> int:
    if isinstance(lit, (IntVar, _NotVar)):
        return lit.Index()
    raise TypeError(f"not a literal: {lit!r}")


class Constraint:
    """One linear (or Boolean constant) constraint; OnlyEnforceIf adds enforcement literals."""

    __slots__ = ("enforcement", "vars", "coeffs", "domain", "bool_or", "written")

    def __init__(self, vars_: list[int], coeffs: list[int], domain: list[int],
                 bool_or: list[int] | None = None):
        self.enforcement: list[int] = []
        self.written = False  # a solve has seen it: its text is final
        self.vars = vars_
        self.coeffs = coeffs
        self.domain = domain
        self.bool_or = bool_or

    def OnlyEnforceIf(self, *literals: Any) -> Constraint:  # noqa: N802
        if self.written:
            raise RuntimeError("OnlyEnforceIf on a constraint a solve has already seen")
        for lit in literals:
            if isinstance(lit, (list, tuple)):
                self.enforcement += [_index(x) for x in lit]
            else:
                self.enforcement.append(_index(lit))
        return self

    def text(self) -> str:
        self.written = True
        enf = "".join(f"enforcement_literal: {i} " for i in self.enforcement)
        if self.bool_or is not None:
            return f"constraints {{ {enf}bool_or {{ {''.join(f'literals: {i} ' for i in self.bool_or)}}} }}"
        body = "".join(f"vars: {i} " for i in self.vars) + "".join(f"coeffs: {k} " for k in self.coeffs)
        body += "".join(f"domain: {d} " for d in self.domain)
        return f"constraints {{ {enf}linear {{ {body}}} }}"


class _VariableView:
    __slots__ = ("domain",)

    def __init__(self, domain: tuple[int, int]):
        self.domain = list(domain)


class _Variables:
    """The model's variables as CpModelProto.variables shows them (len, and .domain of each)."""

    def __init__(self, domains: list[tuple[int, int]]):
        self._domains = domains

    def __len__(self) -> int:
        return len(self._domains)

    def __getitem__(self, index: int) -> _VariableView:
        return _VariableView(self._domains[index])


class _ProtoView:
    """What callers read of CpModel.Proto(): the variables and constraints, in order."""

    def __init__(self, model: CpModel):
        self.variables = _Variables(model._domains)
        self.constraints = model._constraints


def _name_text(name: str) -> str:
    if not name:
        return ""
    escaped = name.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'name: "{escaped}" '


class CpModel:
    def __init__(self) -> None:
        self._vars: list[IntVar] = []
        self._domains: list[tuple[int, int]] = []
        self._constraints: list[Constraint] = []
        self._objective: tuple[list[int], list[int], int] | None = None
        self._hints: list[tuple[int, int]] = []
        self._assumptions: list[int] = []
        self._true: IntVar | None = None
        # the text of variables and constraints written so far: both lists only grow and an entry never
        # changes once a solve has seen it, so each is written once however often the model is solved
        self._var_text: list[str] = []
        self._ct_text: list[str] = []

    # variables
    def NewIntVar(self, lb: int, ub: int, name: str) -> IntVar:  # noqa: N802
        v = IntVar(self, len(self._vars), name)
        self._vars.append(v)
        self._domains.append((int(lb), int(ub)))
        return v

    def NewBoolVar(self, name: str) -> IntVar:  # noqa: N802
        return self.NewIntVar(0, 1, name)

    def GetIntVarFromProtoIndex(self, index: int) -> IntVar:  # noqa: N802
        return self._vars[index]

    GetBoolVarFromProtoIndex = GetIntVarFromProtoIndex

    def Proto(self) -> _ProtoView:  # noqa: N802
        return _ProtoView(self)

    # constraints
    def Add(self, ct: BoundedLinearExpression | bool) -> Constraint:  # noqa: N802
        if isinstance(ct, bool):
            if self._true is None:
                self._true = self.NewIntVar(1, 1, "")
            c = Constraint([], [], [], bool_or=[self._true._index] if ct else [])
        elif isinstance(ct, BoundedLinearExpression):
            terms, const = ct.expr._terms, ct.expr._const
            idx = sorted(i for i, k in terms.items() if k)
            domain = [d if d in (INT_MIN, INT_MAX) else d - const for d in ct.domain]
            c = Constraint(idx, [terms[i] for i in idx], domain)
        else:
            raise TypeError(f"CpModel.Add: not a linear constraint: {ct!r}")
        self._constraints.append(c)
        return c

    # objective, hints, assumptions
    def Minimize(self, expr: Any) -> None:  # noqa: N802
        terms, const = _terms(expr)
        idx = sorted(i for i, k in terms.items() if k)
        self._objective = (idx, [terms[i] for i in idx], const)

    def ClearObjective(self) -> None:  # noqa: N802
        self._objective = None

    def AddHint(self, var: IntVar, value: int) -> None:  # noqa: N802
        self._hints.append((var._index, int(value)))

    def ClearHints(self) -> None:  # noqa: N802
        self._hints = []

    def AddAssumptions(self, literals: Iterable[Any]) -> None:  # noqa: N802
        self._assumptions += [_index(x) for x in literals]

    def ClearAssumptions(self) -> None:  # noqa: N802
        self._assumptions = []

    # output
    def text(self) -> str:
        """The model as a CpModelProto in protobuf text format."""
        for i in range(len(self._var_text), len(self._domains)):
            lb, ub = self._domains[i]
            name = _name_text(self._vars[i]._name)
            self._var_text.append(f"variables {{ {name}domain: {lb} domain: {ub} }}")
        self._ct_text += [c.text() for c in self._constraints[len(self._ct_text):]]
        out = self._var_text + self._ct_text
        if self._objective is not None:
            idx, coeffs, const = self._objective
            obj = "".join(f"vars: {i} " for i in idx) + "".join(f"coeffs: {k} " for k in coeffs)
            if const:
                obj += f"offset: {float(const)!r} "
            out.append(f"objective {{ {obj}scaling_factor: 1 }}")
        if self._hints:
            out.append("solution_hint { " + "".join(f"vars: {i} " for i, _ in self._hints)
                       + "".join(f"values: {v} " for _, v in self._hints) + "}")
        out += [f"assumptions: {i}" for i in self._assumptions]
        return "\n".join(out)

    def Validate(self) -> str:  # noqa: N802
        """The solver's own validation message for the model ('' when valid)."""
        return _backend().validate(self)


class _Parameters:
    """The solver parameters pciplan sets (SatParameters field names)."""

    FIELDS = ("max_time_in_seconds", "max_deterministic_time", "num_workers", "random_seed",
              "num_search_workers", "log_search_progress")

    def __init__(self) -> None:
        self._set: dict[str, Any] = {}

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "_set":
            object.__setattr__(self, name, value)
            return
        if name not in self.FIELDS:
            raise AttributeError(f"solver parameter {name} is not supported by "
                                 f"planner.pipeline.solver.cpmodel")
        self._set[name] = value

    def __getattr__(self, name: str) -> Any:
        if name in self.FIELDS:
            return self._set.get(name)
        raise AttributeError(name)

    def text(self) -> str:
        out = []
        for k, v in self._set.items():
            if isinstance(v, bool):
                v = "true" if v else "false"
            elif isinstance(v, float):
                v = repr(v)
            out.append(f"{k}: {v}")
        return " ".join(out)


def value_in(values: tuple[int, ...] | list[int], x: Any) -> int:
    """The value of a variable or linear expression in a solution (the values of every variable, by
    index): what CpSolver.Value answers, without the solver."""
    if isinstance(x, IntVar):
        return values[x._index]
    if isinstance(x, LinearExpr):
        return x._const + sum(k * values[i] for i, k in x._terms.items())
    return int(x)


class CpSolver:
    def __init__(self) -> None:
        self.parameters = _Parameters()
        self._status = UNKNOWN
        self._values: list[int] = []
        self._objective = 0.0
        self._bound = 0.0
        self._core: list[int] = []

    def Solve(self, model: CpModel) -> int:  # noqa: N802
        r = _backend().solve(model, self.parameters)
        self._status = int(r.status)
        self._values = list(r.solution)
        self._objective = r.objective_value
        self._bound = r.best_objective_bound
        self._core = list(r.sufficient_assumptions_for_infeasibility)
        return self._status

    def Value(self, x: Any) -> int:  # noqa: N802
        if not self._values:
            raise RuntimeError("CpSolver.Value: no solution")
        return value_in(self._values, x)

    def ObjectiveValue(self) -> float:  # noqa: N802
        return self._objective

    def BestObjectiveBound(self) -> float:  # noqa: N802
        return self._bound

    def StatusName(self, status: int | None = None) -> str:  # noqa: N802
        return STATUS_NAMES.get(self._status if status is None else int(status), "UNKNOWN")

    def SufficientAssumptionsForInfeasibility(self) -> list[int]:  # noqa: N802
        return list(self._core)


class _Native:
    """OR-Tools 9.12+: native protos parsed from text (no protobuf Python package needed)."""

    def __init__(self) -> None:
        from ortools.sat.python import cp_model_helper

        self.cmh = cp_model_helper

    def _proto(self, model: CpModel):
        proto = self.cmh.CpModelProto()
        if not proto.parse_text_format(model.text()):
            raise ValueError("planner.pipeline.solver.cpmodel: the model's text did not parse")
        return proto

    def solve(self, model: CpModel, parameters: _Parameters):
        params = self.cmh.SatParameters()
        if not params.parse_text_format(parameters.text()):
            raise ValueError("planner.pipeline.solver.cpmodel: bad solver parameters")
        wrapper = self.cmh.SolveWrapper()
        wrapper.set_parameters(params)
        return wrapper.solve(self._proto(model))

    def validate(self, model: CpModel) -> str:
        return self.cmh.CpSatHelper.validate_model(self._proto(model))


class _Protobuf:
    """OR-Tools before native protos (9.10 and 9.11): the generated protobuf classes, solved by the
    helper's SolveWrapper (swig_helper's in 9.10)."""

    def __init__(self, helper: Any) -> None:
        from google.protobuf import text_format
        from ortools.sat import cp_model_pb2, sat_parameters_pb2

        self.pb, self.params_pb, self.helper, self.text_format = (
            cp_model_pb2, sat_parameters_pb2, helper, text_format)

    def _proto(self, model: CpModel):
        proto = self.pb.CpModelProto()
        add_var = proto.variables.add
        for v, (lb, ub) in zip(model._vars, model._domains, strict=True):
            add_var(name=v._name, domain=[lb, ub])
        add_ct = proto.constraints.add
        for c in model._constraints:
            ct = add_ct(enforcement_literal=c.enforcement)
            if c.bool_or is not None:
                ct.bool_or.literals.extend(c.bool_or)
            else:
                ct.linear.vars.extend(c.vars)
                ct.linear.coeffs.extend(c.coeffs)
                ct.linear.domain.extend(c.domain)
        if model._objective is not None:
            idx, coeffs, const = model._objective
            proto.objective.vars.extend(idx)
            proto.objective.coeffs.extend(coeffs)
            proto.objective.offset = float(const)
            proto.objective.scaling_factor = 1
        for i, value in model._hints:
            proto.solution_hint.vars.append(i)
            proto.solution_hint.values.append(value)
        proto.assumptions.extend(model._assumptions)
        return proto

    def solve(self, model: CpModel, parameters: _Parameters):
        params = self.params_pb.SatParameters()
        self.text_format.Parse(parameters.text(), params)
        wrapper = self.helper.SolveWrapper()
        wrapper.set_parameters(params)
        return wrapper.solve(self._proto(model))

    def validate(self, model: CpModel) -> str:
        return self.helper.CpSatHelper.validate_model(self._proto(model))


_BACKEND: _Native | _Protobuf | None = None


def _backend() -> _Native | _Protobuf:
    global _BACKEND
    if _BACKEND is None:
        if importlib.util.find_spec("ortools.sat.python.swig_helper") is not None:
            from ortools.sat.python import swig_helper

            _BACKEND = _Protobuf(swig_helper)
        else:
            from ortools.sat.python import cp_model_helper

            # native protos from 9.12 on; a helper without them takes the generated protobuf classes
            native = hasattr(cp_model_helper, "CpModelProto")
            _BACKEND = _Native() if native else _Protobuf(cp_model_helper)
    return _BACKEND
