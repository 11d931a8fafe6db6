"""Language-model data, one module per concept:

* :mod:`tl_vpd.data.corpus` — corpora that need no download (the standard library's source,
  local files), Hugging Face datasets and the offline / local-path rules for loads by name
  (:func:`load_from_hub`, :func:`local_path`), :func:`default_corpus` and :class:`LMCorpus`;
* :mod:`tl_vpd.data.tokenizer` — the byte-level BPE tokenizer;
* :mod:`tl_vpd.data.blocks` — token blocks and shuffled batches of them.

Feeding data to training and evaluation is :class:`tl_vpd.data_stream.DataStream`.
"""

from tl_vpd.data.blocks import iterate_batches, tokenize_blocks
from tl_vpd.data.corpus import (
    TOKENS_FILE,
    LMCorpus,
    check_hub_reachable,
    default_corpus,
    hub_offline,
    load_from_hub,
    load_hf_dataset_texts,
    local_path,
    read_text_files,
    stdlib_corpus,
)
from tl_vpd.data.tokenizer import (
    EOS_TOKEN,
    TOKENIZER_FILE,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)

__all__ = [
    "EOS_TOKEN",
    "TOKENIZER_FILE",
    "TOKENS_FILE",
    "LMCorpus",
    "check_hub_reachable",
    "default_corpus",
    "hub_offline",
    "iterate_batches",
    "load_from_hub",
    "load_hf_dataset_texts",
    "load_tokenizer",
    "local_path",
    "read_text_files",
    "save_tokenizer",
    "stdlib_corpus",
    "tokenize_blocks",
    "train_tokenizer",
]
