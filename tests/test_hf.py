"""softlight.hf.patch on tiny Hugging Face causal LMs built from their configs (no downloads):
loss and every parameter's gradient against the unpatched model's own, the Trainer's loss curve
with gradient accumulation, inference untouched, and the models it refuses."""

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

import softlight.hf  # noqa: E402
from transformers.modeling_outputs import CausalLMOutputWithPast  # noqa: E402
from softlight.reference import TOLERANCE, relative_error  # noqa: E402
from support import dtype_name, to_numpy  # noqa: E402

# Where the kernels run: the interpreter's CPU tensors, or a GPU with compiled kernels.
DEVICE = "cpu" if softlight.INTERPRETED else "cuda"
VOCAB = 96
TINY = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2)
# family: (config class, model class, what sets the family apart from Llama's loss)
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=8)),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(head_dim=8, final_logit_softcapping=3.0)),  # tied, softcap
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {}),
    "phi": ("PhiConfig", "PhiForCausalLM", {}),  # a bias on the head
    "cohere": ("CohereConfig", "CohereForCausalLM", dict(logit_scale=0.25)),  # logits * 0.25, tied
    "granite": ("GraniteConfig", "GraniteForCausalLM", dict(logits_scaling=4.0)),  # logits / 4
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", dict(num_local_experts=4, num_experts_per_tok=2,
                                                            output_router_logits=True, router_aux_loss_coef=0.1)),
}


def tiny_model(family="llama", dtype=torch.float32, **changes):
    """A 2-layer model of `family` with random weights; its head scaled so that the logits spread
    over several units, where softcap and temperature change the loss."""
    config_name, model_name, extra = FAMILIES[family]
    config = getattr(transformers, config_name)(**{**TINY, **extra, **changes})
    model = getattr(transformers, model_name)(config)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(30)
    return model.to(DEVICE, dtype)


def batch(batch_size=2, length=10, ignored=3):
    ids = torch.randint(3, VOCAB, (batch_size, length), device=DEVICE)
    labels = ids.clone()
    labels[0, :ignored] = -100  # a prompt whose tokens are not trained on
    return ids, labels


def same_loss_and_gradients(model, autocast=False, **inputs):
    """The patched model's loss and every parameter's gradient against the unpatched model's own
    on the same inputs: within float32's tolerance for a float32 model. In bfloat16 the model's
    own gradients are themselves about bf16's tolerance off (rounding through every layer), so
    each of ours is held against the float64 model's instead: within twice the larger of that
    tolerance and the model's own bf16 error."""
    model.zero_grad(set_to_none=True)
    ours = softlight.hf.patch(copy.deepcopy(model))
    dtype = torch.bfloat16 if autocast else next(model.parameters()).dtype
    exact = copy.deepcopy(model).double() if dtype != torch.float32 else None
    with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=autocast):
        expected = model(**inputs)
        got = ours(**inputs)
    assert got.logits is None and expected.logits is not None
    assert got.loss.dtype == torch.float32
    tolerance = TOLERANCE[dtype_name(dtype)]
    assert abs(got.loss.item() - expected.loss.item()) <= tolerance * abs(expected.loss.item())
    for out in (expected, got) + (() if exact is None else (exact(**inputs),)):
        out.loss.backward()
    truths = model.parameters() if exact is None else exact.parameters()
    for (name, own), mine, truth in zip(model.named_parameters(), ours.parameters(), truths):
        if own.grad is None:
            assert mine.grad is None, name
            continue
        error = relative_error(to_numpy(mine.grad), to_numpy(truth.grad))
        bound = tolerance if exact is None else 2 * max(tolerance, relative_error(to_numpy(own.grad),
                                                                                   to_numpy(truth.grad)))
        assert error <= bound, f"gradient of {name}: relative error {error:.2e} > {bound:.1e}"
    return got, expected


@pytest.mark.parametrize("family", FAMILIES)
def test_loss_and_gradients_match_the_model_own(family):
    model = tiny_model(family)
    ids, labels = batch()
    got, expected = same_loss_and_gradients(model, input_ids=ids, labels=labels)
    if family == "mixtral":  # the router's load-balancing loss is part of the loss
        assert expected.aux_loss is not None and torch.equal(got.aux_loss, expected.aux_loss)


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_bfloat16_model(family):
    ids, labels = batch()
    same_loss_and_gradients(tiny_model(family, torch.bfloat16), input_ids=ids, labels=labels)


def test_mixed_precision():
    """Under autocast with float32 weights (the Trainer's bf16=True) the final hidden states and
    the head are float32, so the patched loss runs the head in float32 where the model's own runs
    it in bf16: the same loss and gradients within bf16's tolerance."""
    ids, labels = batch()
    same_loss_and_gradients(tiny_model("gemma2"), autocast=True, input_ids=ids, labels=labels)


def test_loss_options_of_the_model_own_loss():
    """num_items_in_batch (the Trainer's gradient accumulation), a caller's shift_labels and
    ignore_index, attention_mask, as the model's ForCausalLMLoss takes them."""
    model = tiny_model()
    ids, labels = batch()
    items = torch.tensor(23, device=DEVICE)
    same_loss_and_gradients(model, input_ids=ids, labels=labels, num_items_in_batch=items)
    same_loss_and_gradients(model, input_ids=ids, labels=labels, num_items_in_batch=11)
    shifted = torch.randint(0, VOCAB, ids.shape, device=DEVICE)
    shifted[1, ::3] = 7
    same_loss_and_gradients(model, input_ids=ids, labels=labels, shift_labels=shifted, ignore_index=7)
    mask = torch.ones_like(ids)
    mask[1, -4:] = 0
    same_loss_and_gradients(model, input_ids=ids, labels=labels, attention_mask=mask)


def test_logits_to_keep():
    """logits_to_keep as positions keeps those tokens' hidden states (the model's own head sees
    only them); the loss is over those tokens, with their labels given as shift_labels. An int
    that keeps fewer tokens than the labels have is refused, as the model's own loss cannot take
    it either."""
    model = tiny_model()
    ids, labels = batch()
    keep = torch.tensor([0, 2, 3, 7, 8], device=DEVICE)
    shift_labels = torch.randint(0, VOCAB, (ids.shape[0], len(keep)), device=DEVICE)
    shift_labels[0, 1] = -100
    same_loss_and_gradients(model, input_ids=ids, labels=labels, logits_to_keep=keep, shift_labels=shift_labels)
    same_loss_and_gradients(model, input_ids=ids, labels=labels, logits_to_keep=ids.shape[1])
    softlight.hf.patch(model)
    with pytest.raises(ValueError, match="logits_to_keep"):
        model(input_ids=ids, labels=labels, logits_to_keep=3)


def test_without_labels_nothing_changes():
    model = tiny_model("gemma2")
    ids, labels = batch()
    patched = softlight.hf.patch(copy.deepcopy(model))
    expected, got = model(input_ids=ids, output_hidden_states=True), patched(input_ids=ids, output_hidden_states=True)
    assert torch.equal(got.logits, expected.logits)
    assert all(torch.equal(a, b) for a, b in zip(got.hidden_states, expected.hidden_states))
    prompt = ids[:1, :4]
    assert torch.equal(patched.generate(prompt, max_new_tokens=4, do_sample=False),
                       model.generate(prompt, max_new_tokens=4, do_sample=False))


def test_tuple_outputs_and_positional_labels():
    model = tiny_model()
    ids, labels = batch()
    expected = model(input_ids=ids, labels=labels).loss
    patched = softlight.hf.patch(copy.deepcopy(model))
    out = patched(input_ids=ids, labels=labels, return_dict=False)
    assert isinstance(out, tuple) and torch.allclose(out[0], expected, rtol=1e-6)
    # forward(input_ids, attention_mask, position_ids, cache, inputs_embeds, labels, ...)
    assert torch.allclose(patched(ids, None, None, None, None, labels).loss, expected, rtol=1e-6)


def test_patch_unpatch_and_copies():
    model = tiny_model()
    cls = type(model)
    ids, labels = batch()
    assert softlight.hf.patch(model) is model and softlight.hf.patch(model) is model  # twice is once
    assert softlight.hf.is_patched(model) and isinstance(model, cls) and type(model).__name__ == cls.__name__
    # A copy calls its own head: the gradients land on the copy's weights, not the original's.
    twin = copy.deepcopy(model)
    assert twin(input_ids=ids, labels=labels).logits is None
    twin(input_ids=ids, labels=labels).loss.backward()
    assert twin.lm_head.weight.grad is not None and model.lm_head.weight.grad is None
    # An instance made from the patched class itself is patched too.
    sibling = type(model)(model.config).to(DEVICE)
    assert sibling(input_ids=ids, labels=labels).logits is None
    assert softlight.hf.unpatch(model) is model and type(model) is cls and not softlight.hf.is_patched(model)
    assert model(input_ids=ids, labels=labels).logits is not None
    softlight.hf.unpatch(model)  # unpatching an unpatched model does nothing


def test_models_it_cannot_serve_are_refused_at_patch_time():
    with pytest.raises(TypeError, match="PreTrainedModel"):
        softlight.hf.patch(torch.nn.Linear(3, 4))
    model = tiny_model()
    model.lm_head = torch.nn.Sequential(model.lm_head)
    with pytest.raises(TypeError, match="not a plain torch.nn.Linear"):
        softlight.hf.patch(model)
    model = tiny_model()
    model.loss_function = lambda logits, labels, vocab_size, **kwargs: logits.sum()
    with pytest.raises(ValueError, match="ForCausalLMLoss"):
        softlight.hf.patch(model)
    assert not softlight.hf.is_patched(model)

    class ClampedLogits(transformers.LlamaForCausalLM):
        def forward(self, input_ids=None, labels=None, **kwargs):
            logits = self.lm_head(self.model(input_ids=input_ids).last_hidden_state).clamp(-5, 5)
            loss = None if labels is None else self.loss_function(logits, labels, self.config.vocab_size, **kwargs)
            return CausalLMOutputWithPast(loss=loss, logits=logits)

    with pytest.raises(ValueError, match="uses clamp"):
        softlight.hf.patch(ClampedLogits(tiny_model().config).to(DEVICE))


def test_a_logit_transform_it_did_not_foresee_raises_at_the_first_call():
    """A forward using only known names can still transform its logits otherwise than softlight
    assumed: the probe through the model's own code catches it before any loss is returned."""

    class ScaledLogits(transformers.LlamaForCausalLM):
        def forward(self, input_ids=None, labels=None, **kwargs):
            logits = self.lm_head(self.model(input_ids=input_ids).last_hidden_state) * self.config.vocab_size
            loss = None if labels is None else self.loss_function(logits, labels, self.config.vocab_size, **kwargs)
            return CausalLMOutputWithPast(loss=loss, logits=logits)

    model = softlight.hf.patch(ScaledLogits(tiny_model().config).to(DEVICE))
    ids, labels = batch()
    with pytest.raises(RuntimeError, match="its loss would be wrong"):
        model(input_ids=ids, labels=labels)


class _Tokens(torch.utils.data.Dataset):
    def __init__(self, n=8, length=12):
        generator = torch.Generator().manual_seed(0)
        self.ids = torch.randint(3, VOCAB, (n, length), generator=generator)
        # A different number of trained tokens per sample, so that the normalisation by the
        # tokens of the whole accumulated batch (num_items_in_batch) differs from a mean per micro-batch.
        self.labels = self.ids.clone()
        for i in range(n):
            self.labels[i, : 1 + 2 * i % length] = -100

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def _train(model, tmp_path):
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=2,
        learning_rate=1e-3, logging_steps=1, report_to=[], save_strategy="no", use_cpu=DEVICE == "cpu", seed=0,
        data_seed=0, dataloader_num_workers=0, disable_tqdm=True)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_Tokens())
    trainer.train()
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def test_trainer_loss_curve_with_gradient_accumulation(tmp_path):
    pytest.importorskip("accelerate")
    model = tiny_model("gemma2")
    ours = softlight.hf.patch(copy.deepcopy(model))
    expected = _train(model, tmp_path / "own")
    got = _train(ours, tmp_path / "softlight")
    assert len(got) == len(expected) == 2
    assert got == pytest.approx(expected, rel=1e-5)  # the logged losses: float32's tolerance
    # The weights after two AdamW steps: Adam divides each gradient by its own running size, so a
    # gradient's relative rounding reaches its update undamped (twice over two steps).
    for (name, p), q in zip(model.named_parameters(), ours.parameters()):
        assert relative_error(to_numpy(q), to_numpy(p)) <= 1e-4, name
