"""The build step that compiles ``protos/`` (setup.py ``build_protos``): run here into a temporary
directory, it writes the module the installed package imports, and that module is Envoy 1.40's
listener set_filter_state config, built on xds-protos's own FilterStateValue."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

from google.protobuf import descriptor_pb2

from envoy.extensions.filters.common.set_filter_state.v3 import value_pb2

REPO = Path(__file__).resolve().parents[1]
MODULE = Path("envoy/extensions/filters/listener/set_filter_state/v3/set_filter_state_pb2.py")


def _setup_module():
    spec = importlib.util.spec_from_file_location("zpilot_setup", REPO / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # not as __main__: setup() is not called
    return module


def test_build_step_generates_the_module_the_package_imports(tmp_path: Path) -> None:
    setup = _setup_module()
    outputs = setup.generate(tmp_path / "zpilot" / "_protos")
    assert outputs == [tmp_path / "zpilot" / "_protos" / MODULE]
    assert (tmp_path / "zpilot" / "_protos" / "__init__.py").is_file()

    from zpilot._protos.envoy.extensions.filters.listener.set_filter_state.v3 import set_filter_state_pb2

    assert _serialized_file(outputs[0]) == set_filter_state_pb2.DESCRIPTOR.serialized_pb, (
        "the installed module is not what the build step makes"
    )
    config = set_filter_state_pb2.Config.DESCRIPTOR
    assert config.full_name == "envoy.extensions.filters.listener.set_filter_state.v3.Config"
    [field] = config.fields
    assert (field.name, field.number, field.message_type) == ("on_accept", 1, value_pb2.FilterStateValue.DESCRIPTOR)


def _serialized_file(module: Path) -> bytes:
    """The FileDescriptorProto a generated module registers (its ``AddSerializedFile`` argument)."""
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "AddSerializedFile":
            return ast.literal_eval(node.args[0])
    raise AssertionError(f"{module} registers no file")


def test_imports_come_from_xds_protos_not_from_copies() -> None:
    """protoc gets the imports as descriptors of xds-protos's modules: nothing under protos/ but ours."""
    setup = _setup_module()
    protos = setup.proto_files()
    assert [p.relative_to(setup.PROTOS).as_posix() for p in protos] == [MODULE.with_name("set_filter_state.proto").as_posix()]
    imports = descriptor_pb2.FileDescriptorSet.FromString(setup.imports_descriptor_set(protos))
    names = [f.name for f in imports.file]
    assert "envoy/extensions/filters/common/set_filter_state/v3/value.proto" in names
    assert "udpa/annotations/status.proto" in names
    assert len(names) == len(set(names))
    for i, f in enumerate(imports.file):  # dependencies first, as protoc needs them
        assert set(f.dependency) <= set(names[:i]), f.name
