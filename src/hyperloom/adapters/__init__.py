"""Hypernetworks for pretrained transformers: generated LoRA adapters, exported in PEFT's format.

:class:`LoRATarget` makes the LoRA factors of a frozen model's linear layers (selected with
:func:`hyperloom.select`'s filters) the parameters of an ordinary target module, so the core's
generators, ``hl.call`` and ``hl.HyperNetwork`` apply to them; :func:`call_per_row` runs one
adapter per batch row; :func:`export_peft` writes one adapter for ``peft.PeftModel``. The rest
loads the packaged MiniLM encoder offline and turns Debian's fortunes into classification
tasks. Needs the ``nlp`` extra for the encoder and PEFT (``import hyperloom.adapters`` itself
needs only torch).
"""

from ._lora import LoRATarget as LoRATarget
from ._lora import call_per_row as call_per_row
from ._lora import merged_weights as merged_weights
from ._peft import peft_state_dict as peft_state_dict
from ._peft import export_peft as export_peft
from ._text import minilm_path as minilm_path
from ._text import load_encoder as load_encoder
from ._text import check_tokenizer as check_tokenizer
from ._text import tokenize as tokenize
from ._text import mean_pool as mean_pool
from ._text import embed_texts as embed_texts
from ._fortunes import FORTUNES as FORTUNES
from ._fortunes import DESCRIPTIONS as DESCRIPTIONS
from ._fortunes import Category as Category
from ._fortunes import read_fortunes as read_fortunes
from ._fortunes import load_categories as load_categories
from ._fortunes import task_description as task_description
