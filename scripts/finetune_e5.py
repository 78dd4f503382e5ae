"""Fine-tune multilingual-e5-small for the text categories: low-rank adapters (LoRA) on the
top transformer layers plus the heads, trained together -> text-e5-ft-v1.

Frozen-encoder heads (scripts/train_multilingual_heads.py, text-e5-heads-v1) only reweigh what
the sentence embedding already separates; this lets the top layers move what they attend to.
It runs on two CPU cores in about half an hour because the frozen part is computed once: every
text's hidden states after the lower ``--split-at`` layers are kept (float16, at most
``--max-tokens`` tokens) in ``--cache-dir``, and training runs only the upper layers.

Recipe (the first one tried; chosen before looking at the functional suite):

- data: what train_multilingual_heads.py trains on (``--data permissive``: corpora whose licence
  allows shipping weights, plus the project's seeds), each corpus capped at ``--max-train-rows``
  (a fixed hash-ordered sample); rows whose text occurs in any test split are dropped;
- model: LoRA rank ``--rank`` (alpha = 2 x rank) on q, k, v, attention-out, FFN-in and FFN-out of
  layers ``--split-at``..11, their layer norms, and the heads (one hidden layer), initialised from
  text-e5-heads-v1's heads; the same masked, weighted BCE as the heads script;
- AdamW (weight decay 0.01), one-cycle learning rate ``--lr`` (heads half of it), batch 32,
  ``--epochs`` epochs;
- thresholds for the printed tables: pooled validation at precision 0.8 (the policy's come from
  ``moderation calibrate``).

Outputs: the adapter (``moderation/artifacts/text_e5_ft_v1.adapter.safetensors``: low-rank factors
and layer norms, merged into the encoder at load by moderation/classifiers/e5.py, so scoring costs
what text-e5-heads-v1 costs) and the heads file, both pinned in conf/models/text-e5-ft-v1.yaml
unless ``--no-write``; with ``--report-dir`` the held-out and functional tables as CSV. The tables
here score texts cut at ``--max-tokens``; ``scripts/eval_goals.py`` and ``moderation evaluate``
score through the production classifier (whole texts).

    .venv/bin/python scripts/finetune_e5.py --cache-dir /tmp/cache [--max-train-rows 4000] [--max-eval-rows 500]
        [--split-at 8] [--rank 8] [--epochs 2] [--lr 5e-4] [--report-dir DIR] [--no-write]
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import train_multilingual_heads as heads_script  # scripts/ (this script's folder)
import typer

from moderation.classifiers.e5 import ADAPTER_LINEARS, E5Encoder
from moderation.classifiers.text import normalize_text
from moderation.config import PROJECT_ROOT, load_model_spec
from moderation.evaluation.corpora import CORPORA, TEXT_CATEGORIES, normalise_key
from moderation.evaluation.sources import default_data_dir
from moderation.storage.artifacts import pin_artifact, write_artifact

app = typer.Typer(add_completion=False)
MODEL_ID = "text-e5-ft-v1"
BASE_MODEL = "text-e5-heads-v1"  # its heads initialise the fine-tuned heads
ADAPTER_PATH = "moderation/artifacts/text_e5_ft_v1.adapter.safetensors"
HEADS_PATH = "moderation/artifacts/text_heads_e5_ft_v1.safetensors"
BATCH = 32


class LowerStates:
    """Hidden states after the encoder's first ``split_at`` layers, per text: ``<s>`` + at most
    ``max_tokens`` content tokens + ``</s>``, float16, kept in ``<cache_dir>/e5_h<split>_t<max>_<digest>.safetensors``
    per group of texts (the digest covers the texts, the encoder image and the settings)."""

    def __init__(self, encoder: E5Encoder, encoder_sha256: str, split_at: int, max_tokens: int, cache_dir: Path | None):
        self.encoder, self.split_at, self.max_tokens, self.cache_dir = encoder, split_at, max_tokens, cache_dir
        self.tag = f"{encoder_sha256}:{split_at}:{max_tokens}"

    def get(self, texts: list[str], name: str) -> list:
        import torch
        from safetensors.torch import load_file, save_file

        digest = hashlib.sha256("\x1e".join([self.tag, *texts]).encode("utf-8")).hexdigest()[:24]
        path = None if self.cache_dir is None else self.cache_dir / f"e5_h{self.split_at}_t{self.max_tokens}_{digest}.safetensors"
        if path is not None and path.is_file():
            z = load_file(str(path))
            flat, offsets = z["states"], z["offsets"].tolist()
            return [flat[offsets[i] : offsets[i + 1]] for i in range(len(texts))]
        t0 = time.perf_counter()
        enc = self.encoder
        ids = [[enc.tokenizer.bos, *c[: self.max_tokens], enc.tokenizer.eos] for c in enc.content_ids(texts)]
        out: list = [None] * len(ids)
        order = np.argsort([len(x) for x in ids], kind="stable")
        m = enc.model
        with torch.inference_mode():
            for start in range(0, len(order), 64):
                idx = order[start : start + 64]
                width = max(len(ids[j]) for j in idx)
                arr = torch.full((len(idx), width), enc.tokenizer.bos, dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for r, j in enumerate(idx):
                    arr[r, : len(ids[j])] = torch.tensor(ids[j])
                    mask[r, : len(ids[j])] = 1
                x = m.embed(arr)
                am = m.attention_bias(mask, x.dtype)
                for layer in m.layers[: self.split_at]:
                    x = layer(x, am)
                for r, j in enumerate(idx):
                    out[j] = x[r, : len(ids[j])].to(torch.float16).clone()
        print(f"  {name}: {len(texts)} texts to layer {self.split_at} in {time.perf_counter() - t0:.0f}s", flush=True)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            offsets = np.cumsum([0] + [s.shape[0] for s in out])
            save_file({"states": torch.cat(out) if out else torch.zeros((0, enc.dim), dtype=torch.float16),
                       "offsets": torch.from_numpy(offsets.astype(np.int64))}, str(path))
        return out


def build_trainable(encoder: E5Encoder, heads_np: dict[str, np.ndarray], split_at: int, rank: int):
    """The upper layers with LoRA wrappers, and the heads as a torch module; returns
    (upper layers, heads module, adapter parameters by name, head parameters)."""
    import torch
    from torch import nn

    class LoRA(nn.Module):
        def __init__(self, lin: nn.Linear) -> None:
            super().__init__()
            self.lin = lin
            self.a = nn.Parameter(torch.randn(rank, lin.in_features) / lin.in_features**0.5)
            self.b = nn.Parameter(torch.zeros(lin.out_features, rank))  # starts as the base model
            self.scale = 2.0  # alpha / rank with alpha = 2 x rank

        def forward(self, x):
            return self.lin(x) + (x @ self.a.T @ self.b.T) * self.scale

    class Heads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("shift", torch.tensor(heads_np["input.shift"]))
            self.register_buffer("scale", torch.tensor(heads_np["input.scale"]))
            self.hidden = nn.Linear(heads_np["hidden.weight"].shape[1], heads_np["hidden.weight"].shape[0])
            self.out = nn.Linear(heads_np["weight"].shape[1], heads_np["weight"].shape[0])
            with torch.no_grad():
                for lin, w, b in ((self.hidden, "hidden.weight", "hidden.bias"), (self.out, "weight", "bias")):
                    lin.weight.copy_(torch.tensor(heads_np[w]))
                    lin.bias.copy_(torch.tensor(heads_np[b]))
            self.drop = nn.Dropout(0.2)

        def forward(self, e):
            return self.out(self.drop(torch.relu(self.hidden((e - self.shift) * self.scale))))

    for p in encoder.model.parameters():
        p.requires_grad_(False)
    adapter = {}
    upper = encoder.model.layers[split_at:]
    for i, layer in enumerate(upper, start=split_at):
        for name in ADAPTER_LINEARS:
            lora = LoRA(getattr(layer, name))
            setattr(layer, name, lora)
            adapter[f"l{i}.{name}.lora_a"], adapter[f"l{i}.{name}.lora_b"] = lora.a, lora.b
        for name in ("aln", "oln"):
            ln = getattr(layer, name)
            ln.weight.requires_grad_(True)
            ln.bias.requires_grad_(True)
            adapter[f"l{i}.{name}.w"], adapter[f"l{i}.{name}.b"] = ln.weight, ln.bias
    heads = Heads()
    return upper, heads, adapter


def embed_upper(model, upper, states: list, idx) -> "object":
    """L2-normalised mean-pooled embeddings of rows ``idx`` through the upper layers of ``model``."""
    import torch

    width = max(states[j].shape[0] for j in idx)
    x = torch.zeros(len(idx), width, states[idx[0]].shape[1])
    mask = torch.zeros(len(idx), width, dtype=torch.long)
    for r, j in enumerate(idx):
        n = states[j].shape[0]
        x[r, :n] = states[j].float()
        mask[r, :n] = 1
    am = model.attention_bias(mask, x.dtype)
    for layer in upper:
        x = layer(x, am)
    return torch.nn.functional.normalize(model.mean_pool(x, mask), dim=-1)


def embed_all(model, upper, states: list) -> np.ndarray:
    import torch

    out = np.zeros((len(states), 384), dtype=np.float32)
    order = np.argsort([s.shape[0] for s in states], kind="stable")
    with torch.no_grad():
        for start in range(0, len(order), 128):
            idx = order[start : start + 128]
            out[idx] = embed_upper(model, upper, states, idx).numpy()
    return out


@app.command()
def main(
    data_dir: Path = typer.Option(None, help="labelled data folder (default ../shared/data)"),
    cache_dir: Path = typer.Option(None, help="keep the lower layers' hidden states here (several GB)"),
    max_train_rows: int = typer.Option(4000, help="at most this many training rows per corpus (hash-ordered sample)"),
    max_eval_rows: int = typer.Option(500, help="at most this many validation and test rows per corpus"),
    split_at: int = typer.Option(8, help="fine-tune layers split_at..11 (the lower ones stay frozen)"),
    max_tokens: int = typer.Option(128, help="content tokens kept per text for training and the tables"),
    rank: int = typer.Option(8, help="LoRA rank"),
    epochs: int = typer.Option(2),
    lr: float = typer.Option(5e-4, help="peak learning rate of the adapter (the heads get half)"),
    report_dir: Path = typer.Option(None, help="write heldout_ft.csv and functional_ft.csv here"),
    write: bool = typer.Option(True, help="write the adapter and heads files and pin them"),
    seed: int = 13,
) -> None:
    import torch
    from safetensors.numpy import load as load_np
    from safetensors.numpy import save

    from moderation.evaluation.functional import build_functional_suite
    from moderation.storage.artifacts import read_verified

    torch.manual_seed(seed)
    registry = PROJECT_ROOT / f"conf/models/{MODEL_ID}.yaml"
    spec = load_model_spec(registry)
    base = load_model_spec(PROJECT_ROOT / f"conf/models/{BASE_MODEL}.yaml")
    if "adapter" not in spec.artifacts or spec.artifacts["encoder"].sha256 != base.artifacts["encoder"].sha256:
        raise typer.BadParameter(f"{registry}: expected an adapter artifact over {BASE_MODEL}'s encoder")
    # The base encoder (no adapter): the registry entry without its adapter.
    base_spec = base.model_copy(update={"model_id": MODEL_ID})
    encoder = E5Encoder(base_spec)
    base_heads = load_np(read_verified(BASE_MODEL, "heads", base.artifacts["heads"]))
    lower = LowerStates(encoder, spec.artifacts["encoder"].sha256, split_at, max_tokens, cache_dir)

    groups, allowed, test_keys = heads_script.load_groups(data_dir or default_data_dir(), "permissive", max_train_rows,
                                                          max_eval_rows)
    train_names = [k for k in groups if k.endswith(".train")]
    for k in train_names:
        groups[k] = [r for r in groups[k] if normalise_key(r.text) not in test_keys]
    suite = build_functional_suite().to_pylist()
    states = {k: lower.get([normalize_text(r.text) for r in rows], k) for k, rows in groups.items()}
    states["functional_suite"] = lower.get([normalize_text(r["text"]) for r in suite], "functional_suite")

    upper, heads, adapter = build_trainable(encoder, base_heads, split_at, rank)
    flat, parts = [], []
    for k in train_names:  # row index into `flat` stands in for the features
        parts.append(heads_script.Encoded(groups[k], np.arange(len(flat), len(flat) + len(groups[k]))[:, None],
                                          heads_script._labels(groups[k])))
        flat += states[k]
    xi, y, w = heads_script._training_matrix(parts)
    xi = xi[:, 0].astype(np.int64)
    print(f"training on {len(xi)} rows from {train_names}", flush=True)
    pos, neg = (y * w).sum(0), ((1 - y) * w).sum(0)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(np.where(pos > 0, neg / np.maximum(pos, 1e-9), 1.0),
                                                                 dtype=torch.float32), reduction="none")
    opt = torch.optim.AdamW([{"params": list(adapter.values()), "lr": lr}, {"params": list(heads.parameters()), "lr": lr / 2}],
                            weight_decay=1e-2)
    steps = epochs * -(-len(xi) // BATCH)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[lr, lr / 2], total_steps=steps, pct_start=0.1)
    yt, wt = torch.tensor(y), torch.tensor(w)
    rng = np.random.default_rng(seed)
    for epoch in range(1, epochs + 1):
        # Length-bucketed batches (sorted within chunks of 50 batches), in random order.
        perm, batches = rng.permutation(len(xi)), []
        for c in range(0, len(perm), BATCH * 50):
            chunk = sorted(perm[c : c + BATCH * 50], key=lambda j: flat[xi[j]].shape[0])
            batches += [np.array(chunk[i : i + BATCH]) for i in range(0, len(chunk), BATCH)]
        rng.shuffle(batches)
        heads.train()
        t0, total = time.perf_counter(), 0.0
        for b in batches:
            loss = (loss_fn(heads(embed_upper(encoder.model, upper, flat, xi[b])), yt[b]) * wt[b]).sum() / wt[b].sum().clamp(min=1e-9)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        print(f"epoch {epoch}: loss {total / len(batches):.4f} in {time.perf_counter() - t0:.0f}s", flush=True)
    heads.eval()

    heads_np = {
        "input.shift": base_heads["input.shift"], "input.scale": base_heads["input.scale"],
        "hidden.weight": heads.hidden.weight.detach().numpy(), "hidden.bias": heads.hidden.bias.detach().numpy(),
        "weight": heads.out.weight.detach().numpy(), "bias": heads.out.bias.detach().numpy(),
    }
    enc = {k: heads_script.Encoded(rows, embed_all(encoder.model, upper, states[k]), heads_script._labels(rows)) for k, rows in groups.items()
           if not k.endswith(".train")}
    thresholds = heads_script.pooled_thresholds(heads_np, [enc[f"{n}.validation"] for n in sorted(CORPORA)])
    print("pooled-validation thresholds (precision >= 0.80): %s" % json.dumps({k: round(v, 3) for k, v in thresholds.items()}))
    held = heads_script.heldout_rows(heads_np, thresholds, {n: enc[f"{n}.test"] for n in sorted(CORPORA)}, MODEL_ID)
    heads_script._print_table(f"held-out test splits ({MODEL_ID}, texts cut at {max_tokens} tokens)", held,
                              ["dataset", "language", "category"])
    func = heads_script.functional_rows_from(suite, embed_all(encoder.model, upper, states["functional_suite"]), heads_np, thresholds, MODEL_ID)
    heads_script._print_table(f"functional suite, hate ({MODEL_ID})", [r for r in func if r["functionality"] == "*"],
                              ["language", "functionality"])
    if report_dir is not None:
        report_dir.mkdir(parents=True, exist_ok=True)
        heads_script._write_csv(report_dir / "heldout_ft.csv", held)
        heads_script._write_csv(report_dir / "functional_ft.csv", func)
    if write:
        trained_on = json.dumps(sorted(train_names))
        encoder_sha = spec.artifacts["encoder"].sha256
        meta = {"base_sha256": encoder_sha, "alpha": str(2.0 * rank), "rank": str(rank), "layers": f"{split_at}-11",
                "trained_on": trained_on, "seed": str(seed), "max_tokens": str(max_tokens), "epochs": str(epochs)}
        tensors = {k: v.detach().float().numpy().copy() for k, v in adapter.items()}
        digest = write_artifact(PROJECT_ROOT / ADAPTER_PATH, save(tensors, metadata=meta))
        pin_artifact(registry, "adapter", digest)
        print(f"wrote {ADAPTER_PATH} sha256={digest}")
        hmeta = {"categories": json.dumps(list(TEXT_CATEGORIES)), "encoder_sha256": encoder_sha, "adapter_sha256": digest,
                 "trained_on": trained_on, "seed": str(seed)}
        digest = write_artifact(PROJECT_ROOT / HEADS_PATH, save({k: np.ascontiguousarray(v, dtype=np.float32)
                                                                   for k, v in heads_np.items()}, metadata=hmeta))
        pin_artifact(registry, "heads", digest)
        print(f"wrote {HEADS_PATH} sha256={digest}; both pinned in {registry}")


if __name__ == "__main__":
    app()
