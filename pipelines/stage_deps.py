"""python -m pipelines.stage_deps [--write]: the project modules each `dvc.yaml` stage runs, as its deps.

A stage's code deps are every project module its `python -m pipelines.<stage>` entry point imports,
directly or through other modules, function-level imports included (import-linter's graph). Listing
them by hand drifts: an edit to a module a stage uses would leave `dvc repro` reporting "up to date"
on stale results. Without flags this prints each stage's missing and extra deps and exits 1 if any;
`--write` rewrites the module lines of each stage's `deps:` in place (configs, data and models stay
as written).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipelines", "evaluation", "export", "training")
_STAGE = re.compile(r"^  (\w+):\s*$")
_CMD = re.compile(r"^    cmd:\s*python -m (\S+)")
_DEP = re.compile(r"^      - (\S+)")


def module_file(module: str, root: Path = ROOT) -> str:
    path = module.replace(".", "/")
    return f"{path}.py" if (root / f"{path}.py").exists() else f"{path}/__init__.py"


def stage_modules(entry: str, root: Path = ROOT) -> list[str]:
    """The files of `entry` and of every project module it imports, sorted."""
    import grimp

    graph = grimp.build_graph(*PACKAGES)
    modules = {entry} | graph.find_upstream_modules(entry)
    # Empty package __init__ files carry no code a stage runs.
    files = (module_file(m, root) for m in modules)
    return sorted(f for f in files if not f.endswith("__init__.py") or (root / f).stat().st_size)


def is_code_dep(dep: str) -> bool:
    return dep.split("/")[0] in PACKAGES


def read_stages(text: str) -> dict[str, dict]:
    """{stage: {"entry": module, "deps": [code deps as written]}} from dvc.yaml's text."""
    stages, stage, in_deps = {}, None, False
    for line in text.splitlines():
        if m := _STAGE.match(line):
            stage, in_deps = m.group(1), False
            stages[stage] = {"entry": None, "deps": []}
        elif stage and (m := _CMD.match(line)):
            stages[stage]["entry"] = m.group(1)
        elif stage and line.strip() == "deps:":
            in_deps = True
        elif in_deps and (m := _DEP.match(line)):
            if is_code_dep(m.group(1)):
                stages[stage]["deps"].append(m.group(1))
        elif in_deps and not line.startswith("      "):
            in_deps = False
    return stages


def differences(text: str, root: Path = ROOT) -> dict[str, tuple[list[str], list[str]]]:
    """{stage: (missing, extra)} between each stage's code deps and the modules it runs."""
    result = {}
    for name, stage in read_stages(text).items():
        if not stage["entry"] or stage["entry"].split(".")[0] not in PACKAGES:
            continue
        wanted = stage_modules(stage["entry"], root)
        result[name] = (sorted(set(wanted) - set(stage["deps"])), sorted(set(stage["deps"]) - set(wanted)))
    return result


def rewrite(text: str, root: Path = ROOT) -> str:
    """dvc.yaml's text with each stage's code deps replaced by the modules it runs (where the first one was)."""
    out, stage, entry, in_deps, written = [], None, None, False, False
    for line in text.splitlines(keepends=True):
        if m := _STAGE.match(line):
            stage, entry, in_deps, written = m.group(1), None, False, False
        elif stage and (m := _CMD.match(line)):
            entry = m.group(1)
        elif stage and line.strip() == "deps:":
            in_deps = True
        elif in_deps and (m := _DEP.match(line)) and is_code_dep(m.group(1)) and entry:
            if not written:
                out.extend(f"      - {f}\n" for f in stage_modules(entry, root))
                written = True
            continue
        elif in_deps and not line.startswith("      "):
            in_deps = False
        out.append(line)
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite the code deps of dvc.yaml in place")
    parser.add_argument("--dvc-file", type=Path, default=ROOT / "dvc.yaml")
    args = parser.parse_args(argv)
    text = args.dvc_file.read_text()
    if args.write:
        args.dvc_file.write_text(rewrite(text))
        text = args.dvc_file.read_text()
    stale = False
    for stage, (missing, extra) in differences(text).items():
        stale |= bool(missing or extra)
        state = "exact" if not (missing or extra) else f"missing {', '.join(missing) or '-'}; extra {', '.join(extra) or '-'}"
        print(f"{stage:15s} {state}")
    if stale:
        print(f"{args.dvc_file}: stage deps differ from the modules the stages run; "
              "fix with: python -m pipelines.stage_deps --write", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
