"""The class of every `moe_rbench_*` task (`class:` in each family's `_template*_yaml`): lm-eval's ConfigurableTask,
with `--cache_requests` keyed by what the task read.

lm-eval keys its request cache by task name, few-shot count, process rank and the model's tokenizer name
(lm_eval/api/task.py, `build_all_requests`; lm_eval/caching/cache.py). A run on another data directory or an
edited release file found the requests of the earlier documents under that key, and lm-eval scored their prompts
against the new documents' labels, silently. Here the key also holds a digest of the documents of every split the
task loaded and of its configuration (prompt template, delimiters, ...): other documents or another template are
another cache entry, the same ones still hit the cache.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from lm_eval.api.task import ConfigurableTask


class MoERBenchTask(ConfigurableTask):
    def __init__(self, config: dict | None = None, **kwargs: Any) -> None:
        # lm-eval hands a task class its whole YAML configuration, `class` (this class) included
        super().__init__(config={key: value for key, value in (config or {}).items() if key != "class"}, **kwargs)

    def build_all_requests(self, *, cache_requests: bool = False, tokenizer_name: str = "", **kwargs: Any) -> None:
        if cache_requests:  # lm-eval ends its cache key with the tokenizer name: the digest goes after it
            tokenizer_name = f"{tokenizer_name}-docs{self.content_digest()}"
        super().build_all_requests(cache_requests=cache_requests, tokenizer_name=tokenizer_name, **kwargs)

    def content_digest(self) -> str:
        """A digest of the documents of every split loaded (their `datasets` fingerprints, which hash the content
        of in-memory datasets such as our loaders return) and of the task's configuration."""
        digest = hashlib.sha256()
        for split in sorted(self.dataset):
            documents = self.dataset[split]
            fingerprint = getattr(documents, "_fingerprint", None)
            if fingerprint is None:
                fingerprint = json.dumps(list(documents), sort_keys=True, default=str)
            digest.update(f"{split}\0{fingerprint}\0".encode())
        settings = {key: value for key, value in self.config.to_dict().items() if key != "metadata"}
        digest.update(json.dumps(settings, sort_keys=True, default=_stable_name).encode())
        return digest.hexdigest()[:16]


def _stable_name(value: Any) -> str:
    """A function or class by its qualified name (its repr holds a memory address that changes every run)."""
    name = getattr(value, "__qualname__", None)
    return f"{getattr(value, '__module__', '')}.{name}" if name else repr(value)
