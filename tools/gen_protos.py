"""Generate the Python stubs in clients/python from protos/, or check them for drift.

    python tools/gen_protos.py           # regenerate (make proto)
    python tools/gen_protos.py --check   # fail if regenerating would change anything (make check)

Generation runs into a scratch directory first, so `--check` never touches the tree and
a failed run never leaves half-written stubs behind.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = ROOT / "clients" / "python"
GENERATED_ROOT = "acme"  # the org prefix: the top package of every generated module


def generate(into: Path) -> None:
    """Run protoc with the python, grpc and mypy plugins over every proto file."""
    protos = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    bundled = resources.files("grpc_tools") / "_proto"
    bindir = Path(sys.executable).parent
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"-I{bundled}",
        f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
        f"--python_out={into}",
        f"--grpc_python_out={into}",
        f"--mypy_out={into}",
        f"--mypy_grpc_out={into}",
        *protos,
    ]
    subprocess.run(cmd, check=True, cwd=PROTOS)
    for pkg in (into / GENERATED_ROOT).rglob("*"):
        if pkg.is_dir():
            (pkg / "py.typed").touch()


def differences(left: Path, right: Path) -> list[str]:
    """Relative paths that differ between two generated trees (ignoring caches)."""
    out: list[str] = []
    cmp = filecmp.dircmp(left, right, ignore=["__pycache__"])
    out += [f"only in fresh output: {n}" for n in cmp.left_only]
    out += [f"not generated any more: {n}" for n in cmp.right_only]
    out += [f"changed: {n}" for n in cmp.diff_files]
    for sub in cmp.common_dirs:
        out += [f"{sub}/{d}" for d in differences(left / sub, right / sub)]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report drift")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        committed = OUT / GENERATED_ROOT
        if args.check:
            drift = (
                differences(fresh / GENERATED_ROOT, committed)
                if committed.exists()
                else ["missing"]
            )
            if drift:
                print("generated code is out of date; run `make proto`:", *drift, sep="\n  ")
                return 1
            print("generated code is up to date")
            return 0
        shutil.rmtree(committed, ignore_errors=True)
        shutil.copytree(fresh / GENERATED_ROOT, committed)
    print(f"generated {committed.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
