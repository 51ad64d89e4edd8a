"""The layout the README promises (README, "Layout"): stage scripts on top of the oceansar package, stages import
the package and never each other (pretrain -> prune is the design), no import hidden inside a function, short
functions in the stage scripts."""

import ast
import glob
import os

from helpers import ROOT

STAGES = ("prepare", "pretrain", "prune", "evaluate", "study")


def parsed(path):
    with open(path) as f:
        return ast.parse(f.read(), path)


def imported_modules(tree):
    """Top-level module names imported anywhere in the file."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_stages_import_the_package_not_each_other():
    assert sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "*.py"))) == sorted(STAGES)
    for stage in STAGES:
        others = imported_modules(parsed(os.path.join(ROOT, f"{stage}.py"))) & set(STAGES)
        assert others == ({"prune"} if stage == "pretrain" else set()), (stage, others)
    for path in glob.glob(os.path.join(ROOT, "oceansar", "*.py")):
        assert not imported_modules(parsed(path)) & set(STAGES), path  # the package never imports a stage


def test_no_import_inside_a_function():
    for path in [*glob.glob(os.path.join(ROOT, "*.py")), *glob.glob(os.path.join(ROOT, "oceansar", "*.py"))]:
        for node in ast.walk(parsed(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inner = [n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))]
                assert not inner, f"{path}: {node.name} imports inside its body"


def test_stage_functions_are_short_and_pretrain_reads_in_one_sitting():
    for stage in STAGES:
        for node in ast.walk(parsed(os.path.join(ROOT, f"{stage}.py"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                assert node.end_lineno - start + 1 <= 40, f"{stage}.py: {node.name} has more than 40 lines"
    with open(os.path.join(ROOT, "pretrain.py")) as f:
        assert len(f.read().splitlines()) <= 350
