"""The package's shape (docs/architecture.md): programs import the library, never each other."""

import ast

from helpers import ROOT

PACKAGE = ROOT / "hemnet_jax"
# The programs a user runs (`python -m ...`); everything else in the package is the library.
PROGRAM_DIRS = ("experiments", "tools")
MAX_LINES = 400


def module_name(path):
  parts = path.relative_to(ROOT).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_program(name):
  parts = name.split(".")
  return name == "hemnet_jax.main" or (len(parts) > 2 and parts[1] in PROGRAM_DIRS)


def imported_modules(path, known):
  """The package's modules that `path` imports (at any depth: lazy imports count too)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module:
      found.add(node.module)
      found |= {f"{node.module}.{a.name}" for a in node.names}  # `from pkg import module`
  return {m for m in found if m in known}


def modules():
  return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def test_programs_import_the_library_never_another_program():
  known = modules()
  programs = {m for m in known if is_program(m)}
  assert {"hemnet_jax.main", "hemnet_jax.experiments.probe", "hemnet_jax.tools.predict"} <= programs
  bad = [f"{m} imports {i}" for m, p in sorted(known.items())
         for i in sorted(imported_modules(p, known)) if is_program(i) and i != m]
  assert not bad, "\n".join(bad)


def test_the_walk_sees_a_program_importing_another(tmp_path):
  """The check above is not vacuous: the same walk finds such an import in a made-up module."""
  fake = tmp_path / "x.py"
  fake.write_text("def f():\n  from hemnet_jax.experiments import probe\n")
  assert imported_modules(fake, modules()) >= {"hemnet_jax.experiments.probe"}


def test_every_top_level_folder_is_a_package_with_a_role():
  folders = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__")
  doc = (ROOT / "docs" / "architecture.md").read_text()
  for folder in folders:
    assert (PACKAGE / folder / "__init__.py").exists(), folder
    assert f"`{folder}/`" in doc, f"docs/architecture.md does not describe hemnet_jax/{folder}/"


def test_modules_stay_small():
  long = {m: n for m, p in modules().items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
  assert not long, long
