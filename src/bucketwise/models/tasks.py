"""Which task a text model folder does, read from its configuration, and the head that runs it.

Task names are Hugging Face's. A folder's task comes from its ``config.json``
``architectures`` (as TEI and optimum read it): ``*Model`` (or a sentence-transformers
folder, which has ``modules.json``) is ``feature-extraction``; ``*ForSequenceClassification``
is ``text-classification``, or ``text-ranking`` when it has one label (a cross-encoder);
``*ForTokenClassification`` is ``token-classification``; ``*ForQuestionAnswering`` is
``question-answering``. Any other head (masked or causal LM, multiple choice ...) is refused
with an error naming what is known: its weights would otherwise be dropped and the encoder
run silently in its place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .tokenizer import read_json

__all__ = ["TASKS", "FolderTask", "folder_task", "head_class", "register_head", "text_model_parts"]

TASKS = ("feature-extraction", "text-classification", "text-ranking", "token-classification", "question-answering")

# Architecture suffix -> the task its head does (and the transformers Auto class loading it).
_HEADS = {
    "ForSequenceClassification": ("text-classification", "AutoModelForSequenceClassification"),
    "ForTokenClassification": ("token-classification", "AutoModelForTokenClassification"),
    "ForQuestionAnswering": ("question-answering", "AutoModelForQuestionAnswering"),
}
KNOWN = ("*Model or a sentence-transformers folder (feature-extraction), *ForSequenceClassification "
         "(text-classification; text-ranking with one label), *ForTokenClassification (token-classification), "
         "*ForQuestionAnswering (question-answering)")

_REGISTRY: dict[str, Any] = {}


@dataclass(frozen=True)
class FolderTask:
    """What a model folder's configuration says it does.

    ``tasks`` are the tasks its head can run, the default first; ``architecture`` is the
    class named in ``config.json`` (or "sentence-transformers"); ``labels`` its
    ``id2label`` in id order (empty without a classification head); ``function`` what
    turns a classifier's logits into scores, as transformers' pipeline and
    sentence-transformers' CrossEncoder choose it: ``softmax`` over several labels,
    ``sigmoid`` for one label or multi-label problems, ``none`` where a CrossEncoder
    folder declares an identity activation."""

    folder: str
    architecture: str
    tasks: tuple[str, ...]
    labels: tuple[str, ...]
    auto_class: str | None
    function: str = "softmax"

    @property
    def task(self) -> str:
        return self.tasks[0]

    def describe(self) -> str:
        labels = f", {len(self.labels)} label{'s' if len(self.labels) != 1 else ''}" if self.labels else ""
        return f"a {self.task} model ({self.architecture}{labels})"

    def check(self, task: str | None) -> str:
        """The task to run: ``task`` if this folder's head can do it, else its default.
        Raises :class:`ConfigError` naming the folder and what it can do."""
        if task is None:
            return self.task
        if task not in TASKS:
            raise ConfigError(f"task {task!r} is not one bucketwise runs; the text tasks are {', '.join(TASKS)}")
        if task not in self.tasks:
            extra = (" (text-ranking needs a one-label cross-encoder)"
                     if task == "text-ranking" and "text-classification" in self.tasks else "")
            raise ConfigError(
                f"model {self.folder!r} is {self.describe()}; it cannot run task {task!r}{extra}. "
                f"It runs: {', '.join(self.tasks)}; leave --task out to use {self.task!r}")
        return task

    def command(self) -> str:
        """The command that runs this folder, for error messages."""
        if self.task == "feature-extraction":
            return f"bucketwise embed --model {self.folder}"
        return f"bucketwise predict --model {self.folder} --input FILE (task {self.task})"


def folder_task(folder: str | Path) -> FolderTask:
    """Read the folder's configuration (never its weights) and say what it does."""
    folder = Path(folder)
    activation = None
    if (folder / "modules.json").is_file():
        st = read_json(folder / "config_sentence_transformers.json")
        kind = st.get("model_type") or "SentenceTransformer"
        if kind == "SentenceTransformer":
            return FolderTask(str(folder), "sentence-transformers", ("feature-extraction",), (), None)
        if kind != "CrossEncoder":
            raise ConfigError(f"model {str(folder)!r} is a sentence-transformers {kind}, which bucketwise does not run; "
                              "it runs SentenceTransformer (embeddings) and CrossEncoder (ranking, classification) folders")
        activation = st.get("activation_fn")  # a CrossEncoder saved by sentence-transformers 5 and later
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"model {str(folder)!r}: cannot read config.json ({err}); give a Hugging Face model folder") from None
    archs = [a for a in config.get("architectures") or [] if isinstance(a, str)]
    if not archs:
        return FolderTask(str(folder), str(config.get("model_type", "unknown")), ("feature-extraction",), (), None)
    arch = archs[0]
    for suffix, (task, auto) in _HEADS.items():
        if arch.endswith(suffix):
            labels = _labels(config) if task != "question-answering" else ()
            tasks: tuple[str, ...] = (task,)
            if task == "text-classification":
                tasks = ("text-ranking", task) if len(labels) == 1 else (task,)
            return FolderTask(str(folder), arch, tasks, labels, auto, _function(config, labels, activation))
    if arch.endswith("Model") and not arch.endswith("HeadModel"):
        return FolderTask(str(folder), arch, ("feature-extraction",), (), None)
    raise ConfigError(
        f"model {str(folder)!r} has a {arch} head, which bucketwise does not run; its weights would be "
        f"dropped. Known: {KNOWN}. Save the model with one of those heads (or its base model for embeddings)")


def _labels(config: dict[str, Any]) -> tuple[str, ...]:
    id2label = config.get("id2label") or {}
    if isinstance(id2label, dict) and id2label:
        try:
            return tuple(str(id2label[k]) for k in sorted(id2label, key=int))
        except (TypeError, ValueError):
            pass
    n = int(config.get("num_labels") or 2)
    return tuple(f"LABEL_{i}" for i in range(n))


def _function(config: dict[str, Any], labels: tuple[str, ...], activation: str | None) -> str:
    """``activation``: a CrossEncoder's, from config_sentence_transformers.json (saved by
    sentence-transformers 5+); older CrossEncoders keep it in config.json."""
    st = config.get("sentence_transformers")
    activation = str(activation or (st.get("activation_fn") if isinstance(st, dict) else None) or "")
    if activation:  # a CrossEncoder folder says its activation (torch.nn.modules.activation.Sigmoid ...)
        name = activation.rsplit(".", 1)[-1].lower()
        if name in ("identity", "softmax", "sigmoid"):
            return "none" if name == "identity" else name
    if config.get("problem_type") == "multi_label_classification" or len(labels) == 1:
        return "sigmoid"
    return "softmax"


def register_head(task: str, cls: Any) -> None:
    """Make ``cls`` the head that runs ``task`` (one of :data:`TASKS`)."""
    if task not in TASKS:
        raise ConfigError(f"task {task!r} is not one of {', '.join(TASKS)}")
    _REGISTRY[task] = cls


def head_class(task: str) -> Any:
    """The head class registered for ``task``."""
    if task not in _REGISTRY:
        # Importing them registers the heads. Not only when none is registered: importing
        # models.text alone registers the embedder, and the other heads must still come.
        from . import heads, text  # noqa: F401

    if task not in _REGISTRY:
        raise ConfigError(f"task {task!r} is not one bucketwise runs; the text tasks are {', '.join(TASKS)}")
    return _REGISTRY[task]


def text_model_parts(backend: str, path: str | None, task: str | None = None) -> tuple[Any, Any, Any, str]:
    """(module or LazyModel, tokenizer, spec, task) of the folder ``path`` (default the
    bundled all-MiniLM-L6-v2) for ``task`` (default: the folder's own), as its head loads
    it: what ``bucketwise compile`` builds."""
    from .encoders import model_dir

    if path is None and task in (None, "feature-extraction"):
        task = "feature-extraction"
    else:
        task = folder_task(model_dir(path)).check(task)
    module, tokenizer, spec = head_class(task)._load(backend, path)
    return module, tokenizer, spec, task
