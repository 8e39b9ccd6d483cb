"""modules/prompt_parser.py: multi-cond (``AND``) batches, reduced to what ``CFGDenoiser.forward`` consumes.

``reconstruct_multicond_batch`` returns ``conds_list`` (per image, one ``(row, weight)`` per ``AND`` part, rows
numbered across the batch in image order) and the stacked cond tensor, as prompt_parser.py:321-349 does.
"""

import torch


class ComposableScheduledPromptConditioning:
    def __init__(self, cond, weight=1.0):
        self.cond = cond
        self.weight = weight


class MulticondLearnedConditioning:
    def __init__(self, batch):
        self.batch = batch  # list (images) of lists (AND parts) of ComposableScheduledPromptConditioning


def reconstruct_multicond_batch(c, current_step):
    tensors = []
    conds_list = []
    for composable_prompts in c.batch:
        conds_for_batch = []
        for composable_prompt in composable_prompts:
            conds_for_batch.append((len(tensors), composable_prompt.weight))
            tensors.append(composable_prompt.cond)
        conds_list.append(conds_for_batch)
    return conds_list, torch.stack(tensors)


def reconstruct_cond_batch(c, current_step):
    return c
