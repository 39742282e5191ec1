"""The paper's classifier protocol: multiple-choice tasks scored through a sequence-classification head.

MoE-RBench fine-tunes decoder-only models with a classification head on the prompt. With
`head=sequence_classification`, `moe_hf` loads such a checkpoint (`AutoModelForSequenceClassification`)
and answers a multiple-choice document's loglikelihood requests from the class logits of its prompt:
choice i stands for class `label_map[i]`, and the log-probability of that class (log-softmax over all
classes) is the choice's loglikelihood, so lm-eval's `acc` is the classifier's accuracy.

`label_map`: class ids or names per choice, e.g. `"0,1,2"` or `"entailment,neutral,contradiction"`
(names through the config's `label2id`). Without it, choices map to classes by name when every choice
is a class name of the config's `id2label` (case-insensitive), else choice i to class i.
"""

from __future__ import annotations

from collections import defaultdict

import torch
import torch.nn.functional as F

from moe_rbench_models.errors import OptionError

HEADS = ("causal_lm", "sequence_classification")


class ClassifierScoring:
    def __init__(self, lm, label_map: tuple[str, ...] | None) -> None:
        """`label_map`: the model argument, read (`MoEOptions.label_map`: class ids or names as text)."""
        self.lm = lm
        config = lm.model.config
        self.num_classes = int(config.num_labels)
        self.names = {str(name).strip().lower(): int(i) for i, name in (config.id2label or {}).items()}
        self.label_map = None if label_map is None else self._classes(label_map)
        if config.pad_token_id is None:  # the head reads the last non-padding token of each row
            config.pad_token_id = lm.tokenizer.pad_token_id

    def _classes(self, label_map: tuple[str, ...]) -> list[int]:
        classes = []
        for text in label_map:
            if text.lstrip("-").isdigit():
                classes.append(int(text))
            elif text.lower() in self.names:
                classes.append(self.names[text.lower()])
            else:
                raise OptionError(
                    f"label_map: {text!r} is neither a class id nor a class name of this checkpoint "
                    f"(id2label: {self.names or 'none'})"
                )
        bad = [c for c in classes if not 0 <= c < self.num_classes]
        if bad:
            raise OptionError(
                f"label_map: classes {bad} do not exist; the checkpoint has classes 0-{self.num_classes - 1}"
            )
        return classes

    def choice_classes(self, task: str, choices: list[str]) -> list[int]:
        if self.label_map is not None:
            classes = self.label_map
        elif all(choice.strip().lower() in self.names for choice in choices):
            classes = [self.names[choice.strip().lower()] for choice in choices]
        else:
            classes = list(range(self.num_classes))
        if len(classes) != len(choices):
            source = f"label_map has {len(classes)}" if self.label_map else f"the classifier has {self.num_classes}"
            raise OptionError(
                f"{task}: {len(choices)} choices ({', '.join(c.strip() for c in choices)}) but {source} classes; "
                'set label_map (e.g. label_map="0,1,2") to say which class each choice stands for'
            )
        return classes

    @torch.no_grad()
    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        documents: dict[tuple, list[int]] = defaultdict(list)
        for index, request in enumerate(requests):
            documents[(request.task_name, request.doc_id, request.args[0])].append(index)
        contexts = list(dict.fromkeys(request.args[0] for request in requests))
        log_probs = dict(zip(contexts, self._class_log_probs(contexts), strict=True))
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        for (task, _, context), indices in documents.items():
            choices = sorted({requests[i].idx: requests[i].args[1] for i in indices}.items())
            if len(choices) < 2:
                raise OptionError(
                    f"{task}: head=sequence_classification scores multiple-choice tasks (several choices per "
                    "document); this task asks for one loglikelihood per document."
                )
            classes = self.choice_classes(task, [choice for _, choice in choices])
            scores = log_probs[context]
            best = int(scores.argmax())
            for i in indices:
                chosen = classes[requests[i].idx]
                results[i] = (float(scores[chosen]), chosen == best)
        return results

    def _class_log_probs(self, contexts: list[str]) -> list[torch.Tensor]:
        batch_size = self.lm.batch_size if isinstance(self.lm.batch_size, int) else 8
        out = []
        for start in range(0, len(contexts), batch_size):
            ids, mask = self.lm.tok_batch_encode(
                contexts[start : start + batch_size], left_truncate_len=self.lm.max_length
            )
            logits = self.lm.model(input_ids=ids.to(self.lm.device), attention_mask=mask.to(self.lm.device)).logits
            out.extend(F.log_softmax(logits.float(), dim=-1).cpu())
        return out


def refuse(request_type: str) -> None:
    raise OptionError(
        f"head=sequence_classification answers multiple-choice (loglikelihood) requests only; this run "
        f"asks for {request_type}. Evaluate generation and perplexity tasks with the causal LM head."
    )
