"""Export one adapter in PEFT's on-disk LoRA format."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from torch import Tensor

from ..target import select
from ._lora import LoRATarget


def peft_state_dict(lora: LoRATarget, factors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """One adapter's factors under the names PEFT saves them with.

    Args:
        lora: the :class:`LoRATarget`.
        factors: ``name -> tensor`` for every name of ``hl.select(lora)``, no batch dimension
            (one task's generated adapter, or ``dict(lora.named_parameters())``).

    Returns:
        ``{"base_model.model.<layer>.lora_A.weight": (r, in), ...lora_B.weight: (out, r)}``,
        detached, contiguous, on the CPU.

    Raises:
        ValueError: names or shapes that do not match the spec (a batch of adapters, say).

    Example:
        >>> from torch import nn
        >>> lora = LoRATarget(nn.Sequential(nn.Linear(4, 4)), rank=2)
        >>> sorted(peft_state_dict(lora, dict(lora.named_parameters())))
        ['base_model.model.0.lora_A.weight', 'base_model.model.0.lora_B.weight']
    """
    select(lora).check(factors)
    out = {}
    for layer, a, b in lora.factor_names():
        prefix = f"base_model.model.{layer}"
        out[f"{prefix}.lora_A.weight"] = factors[a].detach().cpu().contiguous()
        out[f"{prefix}.lora_B.weight"] = factors[b].detach().cpu().contiguous()
    return out


def export_peft(
    lora: LoRATarget,
    factors: Mapping[str, Tensor],
    path: str | os.PathLike,
    *,
    base_model: str | None = None,
    task_type: str | None = None,
) -> Path:
    """Write one adapter as a PEFT LoRA folder (``adapter_config.json``, safetensors).

    ``peft.PeftModel.from_pretrained(model, path)`` on the same base model then gives the
    outputs of ``hl.call(lora, factors, ...)`` (tested). The adapter has no dropout and no
    bias; its scale is ``alpha / rank`` (``lora_alpha``, not rsLoRA).

    Args:
        lora: the :class:`LoRATarget` the factors belong to.
        factors: one adapter (no batch dimension), e.g. ``{k: v[t] for k, v in gen(c).items()}``.
        path: the folder to write (created if missing).
        base_model: recorded as ``base_model_name_or_path`` (PEFT reads it only when asked to
            load the base itself); default: the model config's ``_name_or_path`` if any.
        task_type: PEFT's ``task_type`` (``"FEATURE_EXTRACTION"``, ...), or ``None``.

    Returns:
        The folder.

    Raises:
        ValueError: factors that do not match the spec.

    Example:
        >>> from torch import nn
        >>> import tempfile
        >>> lora = LoRATarget(nn.Sequential(nn.Linear(4, 4)), rank=2)
        >>> folder = export_peft(lora, dict(lora.named_parameters()), tempfile.mkdtemp())
        >>> sorted(p.name for p in folder.iterdir())
        ['adapter_config.json', 'adapter_model.safetensors']
    """
    from safetensors.torch import save_file

    tensors = peft_state_dict(lora, factors)
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    if base_model is None:
        config = getattr(lora.model, "config", None)
        base_model = getattr(config, "_name_or_path", None) or None
    config = {
        "peft_type": "LORA",
        "task_type": task_type,
        "base_model_name_or_path": base_model,
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_dropout": 0.0,
        "bias": "none",
        "target_modules": list(lora.layers),
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
    }
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    return folder
