"""The committed generated code in splitnn/v1 matches what protos/ generates today."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("grpc_tools", reason="grpcio-tools (a dev dependency) generates the code")

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "splitnn" / "v1"
FIX = "protos/ and splitnn/v1 disagree: run `python scripts/gen_protos.py` and commit the result"


def _gen_protos():
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _generated_names(directory: Path) -> set[str]:
    return {p.name for p in directory.glob("*_pb2*.py*")}


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("protos")
    _gen_protos().generate(out)
    return out / "splitnn" / "v1"


def test_generation_produces_code_for_every_proto(generated):
    protos = sorted(p.stem for p in (ROOT / "protos" / "splitnn" / "v1").glob("*.proto"))

    names = _generated_names(generated)

    assert protos, "no .proto files found"
    for stem in protos:
        assert {f"{stem}_pb2.py", f"{stem}_pb2.pyi", f"{stem}_pb2_grpc.py"} <= names


def test_same_generated_files_are_committed(generated):
    assert _generated_names(COMMITTED) == _generated_names(generated), FIX


def test_committed_generated_code_is_byte_for_byte_current(generated):
    stale = [
        path.name
        for path in sorted(generated.glob("*_pb2*.py*"))
        if not (COMMITTED / path.name).is_file()
        or (COMMITTED / path.name).read_bytes() != path.read_bytes()
    ]

    assert not stale, f"{FIX} (stale: {', '.join(stale)})"
