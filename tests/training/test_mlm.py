"""The masked-LM loss with logits at the masked tokens only: the model's own loss and gradients."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForMaskedLM

from adapterkit.model import AdaptedModel
from adapterkit.registry import get_method
from adapterkit.testing import tiny_config
from adapterkit.training.mlm import masked_lm_loss


@pytest.mark.parametrize("model_type,method", [("bert", None), ("bert", "pfeiffer"), ("bert", "prompt"),
                                               ("roberta", None), ("distilbert", None), ("mpnet", None)])
def test_masked_lm_loss_equals_the_models_own_loss_and_gradients(model_type: str, method: str | None):
    """Logits only at the masked tokens: the loss and every gradient are those of the model's full-logit loss."""
    torch.manual_seed(0)
    hf = AutoModelForMaskedLM.from_config(tiny_config(model_type))
    adapted = AdaptedModel(hf)
    if method:
        adapted.add_adapter(method, get_method(method).from_dict({}))
    ids = torch.randint(5, 100, (3, 9))
    mask = torch.ones_like(ids)
    mask[2, 6:] = 0
    labels = torch.full_like(ids, -100)
    labels[0, 1], labels[0, 7], labels[1, 4], labels[2, 0] = 11, 12, 13, 14
    inputs = {"input_ids": ids, "attention_mask": mask, "labels": labels}

    def grads(loss: torch.Tensor) -> dict[str, torch.Tensor]:
        adapted.zero_grad()
        loss.backward()
        return {n: p.grad.clone() for n, p in adapted.named_parameters() if p.grad is not None}

    adapted.train()
    torch.manual_seed(1)
    reference = adapted(**inputs).loss
    ref_grads = grads(reference)
    torch.manual_seed(1)  # the same dropout masks
    loss, outputs = masked_lm_loss(adapted, hf, inputs)
    assert outputs.logits.shape == (4, hf.config.vocab_size)
    assert torch.allclose(loss, reference, atol=1e-6)
    ours = grads(loss)
    assert ours.keys() == ref_grads.keys() and ours
    for name, g in ours.items():
        assert torch.allclose(g, ref_grads[name], atol=1e-6), name
    assert not hf.get_output_embeddings()._forward_pre_hooks  # the hook is gone after the call

    none = {**inputs, "labels": torch.full_like(ids, -100)}  # no masked token: loss 0, still differentiable
    loss, _ = masked_lm_loss(adapted, hf, none)
    assert loss.item() == 0.0 and loss.requires_grad
