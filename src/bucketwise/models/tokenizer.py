"""A model folder's ``tokenizer.json`` through the Rust ``tokenizers`` package.

``transformers.AutoTokenizer`` reads the same file, but importing it imports torch (about
3.7 s here), while ``tokenizers`` loads the file in about 0.07 s. :class:`FastTokenizer`
gives what bucketwise uses of a tokenizer (``tokenizer(text, pair, truncation=...,
max_length=...)``, the special token ids, ``model_max_length``, ``model_input_names``,
``len``) and gives the same ids: ``tests/test_encoders.py`` compares them with
AutoTokenizer's for every test architecture. :func:`fast_tokenizer` returns ``None`` for a
folder it cannot read with certainty (no ``tokenizer.json``, or a model type whose inputs it
does not know); the caller then uses AutoTokenizer.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

__all__ = ["FastTokenizer", "fast_tokenizer", "read_json"]

# Which models take token_type_ids, when tokenizer_config.json does not say (transformers'
# per-class default of model_input_names).
_WITH_TYPES = {"bert", "albert", "electra", "deberta", "deberta-v2", "mobilebert", "squeezebert", "convbert",
               "roformer", "nezha", "megatron-bert", "ernie", "funnel", "layoutlm", "xlnet"}
_WITHOUT_TYPES = {"roberta", "xlm-roberta", "camembert", "mpnet", "distilbert", "longformer", "bart", "modernbert"}


def fast_tokenizer(folder: str | Path) -> FastTokenizer | None:
    """The folder's tokenizer without transformers, or ``None`` where that is not certain."""
    folder = Path(folder)
    if not (folder / "tokenizer.json").is_file():
        return None
    config = read_json(folder / "tokenizer_config.json")
    names = config.get("model_input_names")
    if not names:
        model_type = read_json(folder / "config.json").get("model_type")
        if model_type in _WITH_TYPES:
            names = ["input_ids", "token_type_ids", "attention_mask"]
        elif model_type in _WITHOUT_TYPES:
            names = ["input_ids", "attention_mask"]
        else:
            return None
    try:
        return FastTokenizer(folder, config, list(names))
    except Exception:  # noqa: BLE001 - anything unexpected: transformers reads it instead
        return None


class FastTokenizer:
    """Encodes like ``PreTrainedTokenizerFast`` over the same ``tokenizer.json``."""

    pad_token: str | None
    pad_token_id: int | None
    cls_token: str | None
    cls_token_id: int | None
    sep_token: str | None
    sep_token_id: int | None
    unk_token: str | None
    unk_token_id: int | None
    mask_token: str | None
    mask_token_id: int | None

    def __init__(self, folder: Path, config: dict[str, Any], model_input_names: list[str]) -> None:
        from tokenizers import Tokenizer

        self.folder = folder
        self._tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self._tok.no_padding()
        self._tok.no_truncation()
        self._lock = threading.Lock()  # truncation is the Rust tokenizer's state
        self.truncation_side = "right"  # as transformers': which end truncation cuts
        special = {**read_json(folder / "special_tokens_map.json"), **config}
        self.model_input_names = model_input_names
        max_len = config.get("model_max_length")
        self.model_max_length = int(max_len) if isinstance(max_len, (int, float)) and max_len < 1e18 else int(1e30)
        for role in ("pad", "cls", "sep", "unk", "mask"):
            token = _token(special.get(f"{role}_token"))
            setattr(self, f"{role}_token", token)
            setattr(self, f"{role}_token_id", self._tok.token_to_id(token) if token is not None else None)

    def __len__(self) -> int:
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    def __repr__(self) -> str:
        return f"FastTokenizer({str(self.folder)!r})"

    @property
    def backend_tokenizer(self) -> Any:
        """The ``tokenizers.Tokenizer`` (as transformers' fast tokenizers name it). Its
        truncation is state: change it only under :attr:`lock`."""
        return self._tok

    @property
    def lock(self) -> threading.Lock:
        return self._lock

    def __call__(self, text: str | list[str], pair: str | list[str] | None = None, *, truncation: bool | str = False,
                 max_length: int | None = None, padding: bool | str = False, return_tensors: str | None = None,
                 verbose: bool = True) -> dict[str, Any]:
        """One text (or pair), or a list of them, as transformers encodes them: special
        tokens added; ``truncation`` to ``max_length`` (``True`` or ``"longest_first"``;
        ``"only_first"``/``"only_second"`` cut one text of a pair), on the side
        :attr:`truncation_side` names;
        ``padding=True`` (or ``"longest"``) pads a list to its longest; ``return_tensors``
        ``"np"`` or ``"pt"`` gives arrays instead of lists."""
        if padding not in (False, True, "longest", "do_not_pad"):
            raise ValueError(f"padding={padding!r} is not supported here; use True (to the longest) or False")
        batched = isinstance(text, (list, tuple))
        with self._lock:
            if truncation and max_length is not None:
                strategy = "longest_first" if truncation is True else str(truncation)
                self._tok.enable_truncation(max_length, strategy=strategy, direction=self.truncation_side)
            else:
                self._tok.no_truncation()
            if batched:
                inputs = list(zip(text, pair)) if pair is not None else list(text)
                encs = self._tok.encode_batch(inputs)
            else:
                encs = [self._tok.encode(text, pair)]
        rows = [{"input_ids": list(e.ids), "attention_mask": list(e.attention_mask), "token_type_ids": list(e.type_ids)}
                for e in encs]
        if padding in (True, "longest"):
            longest = max(len(r["input_ids"]) for r in rows)
            fill = {"input_ids": self.pad_token_id or 0, "attention_mask": 0, "token_type_ids": 0}
            for r in rows:
                for k, v in fill.items():
                    r[k] = r[k] + [v] * (longest - len(r[k]))
        names = [n for n in ("input_ids", "token_type_ids", "attention_mask") if n in self.model_input_names]
        out: dict[str, Any] = {n: [r[n] for r in rows] if batched else rows[0][n] for n in names}
        if return_tensors is not None:
            out = {n: _tensor(v if batched else [v], return_tensors) for n, v in out.items()}
        return out


def _tensor(rows: list[list[int]], kind: str) -> Any:
    import numpy as np

    if len({len(r) for r in rows}) > 1:
        raise ValueError("texts of different lengths need padding=True to become one tensor")
    arr = np.asarray(rows, dtype=np.int64)
    if kind == "np":
        return arr
    if kind == "pt":
        import torch

        return torch.from_numpy(arr)
    raise ValueError(f"return_tensors={kind!r} is not supported here; use 'np' or 'pt'")


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object file's contents; ``{}`` if it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _token(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None
