"""The build step that pyproject.toml cannot express: compile ``protos/`` (the Envoy API messages
xds-protos has no Python module for) into ``zpilot/_protos/`` with grpcio-tools' protoc.

It runs as a sub-command of ``build``, so ``pip install .``, ``pip wheel .`` and ``pip install -e .``
all produce the module (an editable install writes it into the source tree, a wheel into the
build directory). In a source checkout without an install: ``python3 setup.py build_protos --inplace``.

The copied ``.proto`` files import Envoy, udpa and validate protos that xds-protos ships only as
generated Python. protoc gets those imports as a FileDescriptorSet taken from xds-protos's own
modules, so the generated code refers to exactly the messages the rest of zpilot uses.
"""

from __future__ import annotations

import importlib
import re
import tempfile
from pathlib import Path

from setuptools import Command, setup
from setuptools.command.build import build

ROOT = Path(__file__).resolve().parent
PROTOS = ROOT / "protos"
#: Where the generated modules go, relative to the root of the installed packages.
PACKAGE_DIR = Path("zpilot") / "_protos"
_IMPORT = re.compile(r'^import\s+(?:public\s+|weak\s+)?"([^"]+)";', re.MULTILINE)


def proto_files() -> list[Path]:
    return sorted(PROTOS.rglob("*.proto"))


def _module_of(proto_name: str):
    """xds-protos's (or protobuf's) generated module of ``a/b/c.proto``: ``a.b.c_pb2``."""
    return importlib.import_module(proto_name[: -len(".proto")].replace("/", ".") + "_pb2")


def imports_descriptor_set(protos: list[Path]) -> bytes:
    """A FileDescriptorSet of every file the ``protos`` import, transitively, dependencies first."""
    from google.protobuf import descriptor_pb2

    ours = {p.relative_to(PROTOS).as_posix() for p in protos}
    result = descriptor_pb2.FileDescriptorSet()
    done: set[str] = set()

    def add(file_descriptor) -> None:
        if file_descriptor.name in done:
            return
        done.add(file_descriptor.name)
        for dependency in file_descriptor.dependencies:
            add(dependency)
        file_descriptor.CopyToProto(result.file.add())

    for proto in protos:
        for name in _IMPORT.findall(proto.read_text()):
            if name not in ours:
                add(_module_of(name).DESCRIPTOR)
    return result.SerializeToString()


def generate(out_dir: Path) -> list[Path]:
    """Compile every ``protos/**/*.proto`` into ``out_dir`` (the ``zpilot/_protos`` directory);
    returns the generated files."""
    from grpc_tools import protoc

    protos = proto_files()
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        imports = Path(tmp) / "imports.pb"
        imports.write_bytes(imports_descriptor_set(protos))
        args = ["protoc", f"--descriptor_set_in={imports}", f"--proto_path={PROTOS}", f"--python_out={out_dir}"]
        args += [p.relative_to(PROTOS).as_posix() for p in protos]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {', '.join(args[4:])}")
    outputs = [out_dir / p.relative_to(PROTOS).with_name(p.stem + "_pb2.py") for p in protos]
    missing = [str(o) for o in outputs if not o.is_file()]
    if missing:
        raise RuntimeError(f"protoc did not write {', '.join(missing)}")
    (out_dir / "__init__.py").write_text('"""Generated at build time from protos/ (setup.py). Do not edit."""\n')
    return outputs


class build_protos(Command):
    """Generate ``zpilot/_protos`` (in the build directory; in the source tree when editable)."""

    description = "compile protos/ into zpilot/_protos with grpcio-tools"
    user_options = [("inplace", "i", "write into the source tree (zpilot/_protos) instead of the build directory")]
    boolean_options = ["inplace"]

    def initialize_options(self) -> None:
        self.inplace = False
        self.editable_mode = False  # set by setuptools for `pip install -e .`
        self.build_lib: str | None = None

    def finalize_options(self) -> None:
        self.set_undefined_options("build_py", ("build_lib", "build_lib"))

    def _out_dir(self) -> Path:
        base = ROOT if (self.inplace or self.editable_mode) else Path(self.build_lib or "build/lib")
        return base / PACKAGE_DIR

    def run(self) -> None:
        for path in generate(self._out_dir()):
            self.announce(f"generated {path}", level=2)

    def get_source_files(self) -> list[str]:
        return [p.relative_to(ROOT).as_posix() for p in proto_files()]

    def get_outputs(self) -> list[str]:
        out = self._out_dir()
        return [str(out / "__init__.py")] + [
            str(out / p.relative_to(PROTOS).with_name(p.stem + "_pb2.py")) for p in proto_files()
        ]

    def get_output_mapping(self) -> dict[str, str]:
        return {}


class build_with_protos(build):
    sub_commands = [("build_protos", None), *build.sub_commands]


if __name__ == "__main__":
    setup(cmdclass={"build": build_with_protos, "build_protos": build_protos})
