"""Generate the Python stubs of protos/ into distill/ (the only way they are made).

    python scripts/gen_protos.py            # regenerate in place
    python scripts/gen_protos.py --out DIR  # write elsewhere (the freshness test compares)

Needs grpcio-tools at the version pinned in pyproject.toml: another version writes other bytes.
"""

import argparse
import pathlib
import sys

from grpc_tools import protoc
import grpc_tools

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protos"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(out_dir: pathlib.Path) -> list[pathlib.Path]:
    """Run protoc on every .proto under protos/; return the files it wrote."""
    protos = sorted(p.relative_to(PROTO_DIR).as_posix() for p in PROTO_DIR.rglob("*.proto"))
    out_dir.mkdir(parents=True, exist_ok=True)
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    rc = protoc.main([
        "protoc", f"-I{PROTO_DIR}", f"-I{well_known}",
        f"--python_out={out_dir}", f"--pyi_out={out_dir}", f"--grpc_python_out={out_dir}",
        *protos,
    ])
    if rc != 0:
        sys.exit(f"protoc failed with exit code {rc}")
    stems = [out_dir / p.removesuffix(".proto") for p in protos]
    return [s.with_name(s.name + suffix) for s in stems for suffix in GENERATED_SUFFIXES]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=ROOT)
    for path in generate(parser.parse_args().out):
        print(path)
