#!/usr/bin/env python3
"""Regenerate the committed protobuf/gRPC modules from ``proto/**/*.proto``.

Why a script: protoc writes no ``__init__.py`` and writes empty ``*_pb2_grpc.py(i)`` for
files without services; doing both by hand drifts. ``--check`` regenerates into a temporary
directory and diffs against the committed files (CI drift check, exit 1 on drift).

Layout (see docs/catalog.md): ``proto/catalog/v1/x.proto`` with ``package
gridpacs.catalog.v1;`` generates ``catalog/v1/x_pb2.py`` importable as
``from catalog.v1 import x_pb2``.
"""

from __future__ import annotations

import argparse
import difflib
import sys
import tempfile
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PROTO_ROOT.parent
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")
INIT_TEXT = '"""Generated from proto/{rel}: never edit by hand, run proto/generate.py."""\n'


def proto_files() -> list[Path]:
    """Every .proto source, relative to ``proto/``, in a stable order."""
    return sorted(p.relative_to(PROTO_ROOT) for p in PROTO_ROOT.rglob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Run protoc into ``out_dir``; return the generated files relative to it."""
    from grpc_tools import protoc  # deferred: only the generator needs grpcio-tools

    files = proto_files()
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *(str(f) for f in files),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    produced: list[Path] = []
    for proto in files:
        stem = proto.with_suffix("")
        for suffix in GENERATED_SUFFIXES:
            path = out_dir / f"{stem}{suffix}"
            if not path.exists():
                continue
            grpc_module = out_dir / f"{stem}_pb2_grpc.py"
            if suffix.startswith("_pb2_grpc") and not _has_services(grpc_module):
                path.unlink()
                continue
            produced.append(path.relative_to(out_dir))
    for package_dir in sorted({f.parent for f in files}):
        init = out_dir / package_dir / "__init__.py"
        init.write_text(INIT_TEXT.format(rel=package_dir.as_posix()))
        produced.append(init.relative_to(out_dir))
    return sorted(produced)


def _has_services(grpc_module: Path) -> bool:
    return grpc_module.exists() and "class " in grpc_module.read_text()


def check() -> int:
    """Regenerate into a temp dir and diff with the committed tree; 1 on drift."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        drift = 0
        for rel in generate(fresh):
            new = (fresh / rel).read_text().splitlines(keepends=True)
            committed = REPO_ROOT / rel
            old = committed.read_text().splitlines(keepends=True) if committed.exists() else []
            diff = list(difflib.unified_diff(old, new, f"committed/{rel}", f"generated/{rel}"))
            if diff:
                drift += 1
                sys.stdout.writelines(diff[:40])
        if drift:
            print(f"generate.py --check: {drift} generated file(s) differ; run proto/generate.py")
            return 1
    print("generate.py --check: generated code is up to date")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="diff instead of writing; exit 1 on drift"
    )
    opts = parser.parse_args(argv)
    if opts.check:
        return check()
    for rel in generate(REPO_ROOT):
        print(f"wrote {rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
