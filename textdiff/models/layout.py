"""Linear weights laid out for products of few rows on CPU (docs/design.md#weights-laid-out-for-few-rows).

``nn.Linear`` keeps its weight as ``[out, in]``, row-major. On CPU a product of a few rows with that matrix (the
keyword sampler's forwards: a dozen new tokens per call, eight drafts per decoding step) runs 2–4x slower with two
threads than the same product on the same values stored as ``[in, out]``; from about 64 rows up the two layouts cost
the same (``recipes/bench_layout.py``). :func:`for_few_rows` stores every linear weight as the transpose of a
contiguous ``[in, out]`` matrix: the parameter keeps its shape and values, only its strides change.
"""

from __future__ import annotations

import torch
from torch import nn

_HOOKED = "_textdiff_contiguous_state"


def for_few_rows(model: nn.Module) -> nn.Module:
    """``model`` with every ``nn.Linear`` weight stored ``[in, out]``-contiguous (in place; returned for chaining).

    A weight shared with another module (an output head tied to the embeddings) stays one parameter; weights of a
    ``Parameter`` subclass (quantised layers) are left as they are. The model's ``state_dict`` gives contiguous
    tensors, shared ones still shared, so ``save_pretrained`` writes the usual file. Calling it again changes
    nothing."""
    relaid: dict[int, nn.Parameter] = {}
    for module in model.modules():
        weight = module.weight if isinstance(module, nn.Linear) else None
        if type(weight) is not nn.Parameter or id(weight) in relaid or weight.t().is_contiguous():
            continue  # absent, a quantised subclass, already laid out, or a vector
        relaid[id(weight)] = nn.Parameter(weight.detach().t().contiguous().t(), requires_grad=weight.requires_grad)
    for module in model.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            if id(param) in relaid:
                setattr(module, name, relaid[id(param)])
    if relaid and not getattr(model, _HOOKED, False):
        model.register_state_dict_post_hook(_contiguous_state)
        setattr(model, _HOOKED, True)
    return model


def _contiguous_state(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """Replace the strided tensors of ``state_dict`` by contiguous copies, one copy per shared storage."""
    copies: dict[tuple, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        if isinstance(tensor, torch.Tensor) and not tensor.is_contiguous():
            where = (tensor.data_ptr(), tuple(tensor.shape), tensor.stride())
            state_dict[key] = copies.setdefault(where, tensor.contiguous())
