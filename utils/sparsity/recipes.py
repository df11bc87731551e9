"""SparseML recipe loading and validation: every broken recipe fails here, before training, naming recipe/modifier/field.

Accepted forms of `--recipe`: a .yaml/.md path (Markdown recipe cards carry the YAML as front matter between `---`
lines), a zoo: stub, or the YAML text itself. SparseML's ScheduledModifierManager.from_yaml does the real parsing
(variables, eval(...) expressions, staged recipes); we pre-parse with a tolerant loader only to point at the culprit.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml
from torch import nn

from utils.sparsity.modifiers import modifier_kind, sparseml_manager_class
from utils.sparsity.zoo import ZooError, front_matter, resolve_recipe
from utils.recipe_eval import ALLOWED, ExpressionError, bounded_eval

ALL_TOKENS = ("__ALL__", "__ALL_PRUNABLE__")
# Fields that name parameters (matched against model.named_parameters) or modules (matched against named_modules).
PARAM_FIELDS = ("params",)
MODULE_FIELDS = ("submodules", "ignore")


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the recipe, the modifier and the field."""


@dataclass
class ModifierSpec:
    """One modifier as written in the recipe (pre-parse), to name it in error messages."""

    tag: str
    fields: dict
    line: int
    index: int

    def label(self) -> str:
        return f"modifier #{self.index} !{self.tag} (YAML line {self.line})"


@dataclass
class Recipe:
    """A validated recipe: its display name, YAML text, variable overrides and the SparseML manager built from it."""

    name: str
    text: str
    args: dict = field(default_factory=dict)
    manager: Any = None
    specs: list[ModifierSpec] = field(default_factory=list)

    def modifiers(self) -> list:
        """Flat list of SparseML modifier objects (staged recipes included)."""
        return list(self.manager.iter_modifiers())

    def has(self, *kinds: str) -> bool:
        """Does the recipe hold a modifier of one of these kinds (utils.sparsity.modifiers.KINDS)?"""
        return any(modifier_kind(m) in kinds for m in self.modifiers())


# --------------------------------------------------------------------------------------------------- reading
def recipe_source(recipe: str | Path) -> tuple[str, str]:
    """(display name, YAML text) of a --recipe value: zoo: stub, file path, or YAML text."""
    s = str(recipe).strip()
    if s.startswith("zoo:"):
        try:
            path = resolve_recipe(s)
        except ZooError as e:
            raise RecipeError(f"--recipe {e}") from None
        return s, front_matter(Path(path).read_text(errors="ignore"))
    if "\n" not in s and Path(s).is_file():
        return s, front_matter(Path(s).read_text(errors="ignore"))
    if "\n" in s or ("modifiers" in s and ":" in s):
        return "<recipe text>", front_matter(s)
    raise RecipeError(f"--recipe {s}: file not found. Pass a .yaml or .md recipe path, a zoo: stub, or the YAML text "
                      f"(see recipes/README.md for ready-made ones).")


def parse_recipe_args(args: str | dict | None) -> dict:
    """--recipe-args as a dict: JSON or YAML mapping text ('{"num_epochs": 30}' or 'num_epochs: 30')."""
    if not args:
        return {}
    if isinstance(args, dict):
        return dict(args)
    try:
        d = yaml.safe_load(args)
    except yaml.YAMLError as e:
        raise RecipeError(f"--recipe-args {args!r}: not valid JSON/YAML ({e}); use e.g. '{{\"num_epochs\": 30}}'") from None
    if not isinstance(d, dict):
        raise RecipeError(f"--recipe-args {args!r}: expected a mapping like '{{\"num_epochs\": 30}}'")
    return d


# ---------------------------------------------------------------------------------------------- pre-parsing
class _TolerantLoader(yaml.SafeLoader):
    """SafeLoader that turns any `!Tag` mapping into a dict, so unknown modifiers can be located and named."""

    yaml_constructors = {k: v for k, v in yaml.SafeLoader.yaml_constructors.items() if not str(k).startswith("!")}
    yaml_multi_constructors = {}


def _tagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict:
    data = loader.construct_mapping(node, deep=True) if isinstance(node, yaml.MappingNode) else {}
    return {"__tag__": suffix.split(".")[-1], "__line__": node.start_mark.line + 1, **data}


_TolerantLoader.add_multi_constructor("!", _tagged)


def _walk_tagged(obj: Any) -> Iterator[dict]:
    if isinstance(obj, dict):
        if "__tag__" in obj:
            yield obj
            return
        for v in obj.values():
            yield from _walk_tagged(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk_tagged(v)


def preparse(name: str, text: str) -> tuple[dict, list[ModifierSpec]]:
    """Top-level mapping and modifier specs; YAML syntax errors become RecipeError with the line."""
    try:
        root = yaml.load(text, Loader=_TolerantLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise RecipeError(f"recipe {name}: YAML error{where}: {getattr(e, 'problem', None) or e}. "
                          f"Fix the indentation/brackets there (modifiers must be block-style mappings).") from None
    if not isinstance(root, dict):
        raise RecipeError(f"recipe {name}: expected a YAML mapping with a 'modifiers:' list, got {type(root).__name__}")
    specs = [ModifierSpec(d["__tag__"], {k: v for k, v in d.items() if not k.startswith("__")}, d["__line__"], i)
             for i, d in enumerate(_walk_tagged(root))]
    if not specs:
        raise RecipeError(f"recipe {name}: no modifiers found; list them under 'modifiers:' as '- !GMPruningModifier'")
    return root, specs


def known_modifiers() -> list[str]:
    """Modifier tags SparseML registered for PyTorch (import_sparseml must have run)."""
    return sorted(str(k)[len("!pytorch."):] for k in yaml.SafeLoader.yaml_constructors if str(k).startswith("!pytorch."))


# --------------------------------------------------------------------------------------------------- building
def _check_tags(name: str, specs: list[ModifierSpec]) -> None:
    known = set(known_modifiers())
    for s in specs:
        if s.tag not in known:
            raise RecipeError(f"recipe {name}: {s.label()}: unknown modifier '{s.tag}'. "
                              f"Known modifiers: {', '.join(sorted(known))}")


def _check_args(name: str, root: dict, args: dict) -> None:
    variables = {k for k, v in root.items() if not isinstance(v, (list, dict))}
    unknown = sorted(set(args) - variables)
    if unknown:
        raise RecipeError(f"--recipe-args {unknown}: not variables of recipe {name}; "
                          f"its variables are: {', '.join(sorted(variables)) or '(none)'}")
    for k, v in args.items():  # a number stays a number: 'abc' for num_epochs would fail deep inside SparseML
        default = root[k]
        numeric = _is_number(default) or _eval_text(default) is not None
        if numeric and not (_is_number(v) or _eval_text(v) is not None):
            raise RecipeError(f"--recipe-args {k}={v!r}: expected a number (recipe {name} has {k}: {default!r})")
        if not numeric and type(v) is not type(default):
            raise RecipeError(f"--recipe-args {k}={v!r}: expected a {type(default).__name__} like the recipe's "
                              f"{k}: {default!r} (recipe {name})")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _eval_text(value: Any) -> str | None:
    """The expression inside a SparseML 'eval(...)' string, else None."""
    s = value.strip() if isinstance(value, str) else ""
    return s[5:-1] if s.startswith("eval(") and s.endswith(")") else None


def _scope_vars(mapping: dict) -> dict:
    """Recipe variables of one level: plain (non-list, non-mapping) values, as SparseML collects them."""
    return {k: v for k, v in mapping.items() if not isinstance(v, (list, dict)) and not str(k).startswith("__")}


class _Scope:
    """Variables visible at one recipe level; resolves eval(...) variables once each, refusing cycles."""

    def __init__(self, variables: dict):
        self.variables, self.values, self.active = variables, {}, set()

    def lookup(self, var: str) -> int | float:
        if var in self.values:
            return self.values[var]
        if var not in self.variables:
            raise ExpressionError(f"unknown variable '{var}'")
        value, expr = self.variables[var], _eval_text(self.variables[var])
        if expr is None:
            if not _is_number(value):
                raise ExpressionError(f"variable '{var}' is {value!r}, not a number")
        elif var in self.active:
            raise ExpressionError(f"variables form a cycle through '{var}'")
        else:
            self.active.add(var)
            value = bounded_eval(expr, self.lookup)
            self.active.discard(var)
        self.values[var] = value
        return value

    def check(self, value: Any) -> None:
        """Evaluate an eval(...) string (a bare name of a non-numeric variable is passed through, as SparseML does)."""
        expr = _eval_text(value)
        if expr is None or (expr.strip() in self.variables and not _is_number(self.variables[expr.strip()])
                            and _eval_text(self.variables[expr.strip()]) is None):
            return
        bounded_eval(expr, self.lookup)


def _expressions(obj: Any, where: str) -> Iterator[tuple[str, Any]]:
    """(where, value) for every string under obj, where naming the modifier and field."""
    if isinstance(obj, dict):
        tag = obj.get("__tag__")
        for k, v in obj.items():
            if not str(k).startswith("__"):
                yield from _expressions(v, f"modifier !{tag} (YAML line {obj['__line__']}), field '{k}'"
                                        if tag else f"field '{k}'" if not where else f"{where}.{k}")
    elif isinstance(obj, list):
        for v in obj:
            yield from _expressions(v, where)
    elif isinstance(obj, str):
        yield where, obj


def _levels(root: dict, args: dict) -> Iterator[tuple[str, dict, dict]]:
    """(label prefix, variables, containers) of the top level and of each stage (stage variables shadow the top)."""
    top = {**_scope_vars(root), **args}
    containers = {k: v for k, v in root.items() if isinstance(v, (list, dict))}
    stages = {k: v for k, v in containers.items() if isinstance(v, dict) and any("modifiers" in str(x) for x in v)}
    yield "", top, {k: v for k, v in containers.items() if k not in stages}
    for stage, body in stages.items():
        yield f"stage '{stage}', ", {**top, **_scope_vars(body)}, {k: v for k, v in body.items()
                                                                 if isinstance(v, (list, dict))}


def check_expressions(name: str, root: dict, args: dict) -> None:
    """Evaluate every eval(...) with bounded arithmetic before SparseML does (its eval has no limit on **)."""
    for prefix, variables, containers in _levels(root, args):
        scope = _Scope(variables)
        items = [(f"{prefix}variable '{k}'", v) for k, v in variables.items()]
        items += [(prefix + w, v) for k, c in containers.items() for w, v in _expressions(c, f"field '{k}'")]
        for where, value in items:
            try:
                scope.check(value)
            except ExpressionError as e:
                raise RecipeError(f"recipe {name}: {where}: {value.strip()} refused: {e}; recipes may use "
                                  f"{ALLOWED}") from None

def _explain_type_error(name: str, specs: list[ModifierSpec], msg: str) -> str:
    """Map SparseML's constructor TypeError to the modifier and field it concerns."""
    m = (re.search(r"unexpected keyword argument '(\w+)'", msg) or re.search(r"argument: '(\w+)'", msg)
         or re.search(r"^(\w+) must be", msg) or re.search(r"'(\w+)'", msg))
    fld = m.group(1) if m else "?"
    cls = re.search(r"(\w+Modifier)", msg)
    cands = [s for s in specs if not cls or s.tag == cls.group(1)]
    missing = "missing" in msg
    spec = next((s for s in cands if (fld not in s.fields) == missing), cands[0] if cands else None)
    where = spec.label() if spec else (cls.group(1) if cls else "a modifier")
    hint = "required field missing" if missing else ("unknown field" if "unexpected" in msg else "bad value")
    return f"recipe {name}: {where}, field '{fld}': {hint} ({msg})"


# SparseML adds its framework prefix to a `!Tag` only when no '.' follows on the line (a comment naming train.py
# hides the tag from it): comments after tags go before SparseML sees the text
TAG_COMMENT = re.compile(r"^(\s*(?:-\s*)?!\w+)[ \t]+#.*$", re.M)


def build_manager(name: str, text: str, args: dict, specs: list[ModifierSpec]) -> Any:
    """ScheduledModifierManager.from_yaml with errors translated to RecipeError."""
    manager_cls = sparseml_manager_class()
    try:
        return manager_cls.from_yaml(TAG_COMMENT.sub(r"\1", text), recipe_variables=args or None)
    except TypeError as e:
        raise RecipeError(_explain_type_error(name, specs, str(e))) from None
    except (ValueError, NameError, KeyError, AttributeError, RuntimeError, yaml.YAMLError) as e:
        raise RecipeError(f"recipe {name}: cannot build modifiers ({type(e).__name__}: {e}). "
                          f"Check eval(...) expressions and variable names.") from None


def load_recipe(recipe: str | Path, recipe_args: str | dict | None = None, model: nn.Module | None = None) -> Recipe:
    """Read, parse and validate a recipe (against `model`'s parameter/module names when given)."""
    name, text = recipe_source(recipe)
    args = parse_recipe_args(recipe_args)
    root, specs = preparse(name, text)
    sparseml_manager_class()  # registers the modifier tags
    _check_tags(name, specs)
    _check_args(name, root, args)
    check_expressions(name, root, args)
    rec = Recipe(name, text, args, build_manager(name, text, args, specs), specs)
    if model is not None:
        problems = unmatched_targets(rec, model)
        if problems:
            raise RecipeError(f"recipe {name}: names that match nothing in this model:\n  " + "\n  ".join(problems)
                              + "\nUse this model's layer names (e.g. model.2.cv1.conv.weight; see recipes/README.md).")
    return rec


# ---------------------------------------------------------------------------------------------- layer checks
def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def _matches(pattern: str, names: list[str]) -> bool:
    if pattern.startswith("re:"):
        rx = re.compile(pattern[3:])
        return any(rx.match(n) for n in names)
    return pattern in names


def _spec_for(rec: Recipe, modifier: Any, i: int) -> str:
    specs = [s for s in rec.specs if s.tag == type(modifier).__name__]
    same = [m for m in rec.modifiers() if type(m).__name__ == type(modifier).__name__]
    k = next((j for j, m in enumerate(same) if m is modifier), 0)
    return specs[k].label() if k < len(specs) else f"modifier #{i} !{type(modifier).__name__}"


def unmatched_targets(rec: Recipe, model: nn.Module) -> list[str]:
    """'modifier, field: name' for every param/module name or regex of the recipe that matches nothing in model."""
    params = [n for n, _ in model.named_parameters()]
    modules = [n for n, _ in model.named_modules()]
    out = []
    for i, m in enumerate(rec.modifiers()):
        for fld in PARAM_FIELDS + MODULE_FIELDS:
            names = modules if fld in MODULE_FIELDS else params
            values = getattr(m, fld, None) if hasattr(type(m), fld) or hasattr(m, fld) else None
            for p in _as_list(values):
                if p in ALL_TOKENS or _matches(p, names):
                    continue
                out.append(f"{_spec_for(rec, m, i)}, field '{fld}': {p}")
    return out
