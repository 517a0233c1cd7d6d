"""Rows after prompts (docs/mcmc.md#rows-after-prompts): both engines give the log-probabilities (scoring) and logits
(decoding, rows leaving midway) of the model's own forward on prompt + row, and a row's numbers depend neither on its
batchmates nor on what the token tree holds (docs/mcmc.md#a-tree-of-scored-tokens); the Llama-layout engine is taken
only where it reproduces the model."""

from __future__ import annotations

import pytest
import torch
import transformers

from textdiff.mcmc.prompted import PlainDecoding, PlainLM, PromptedLM, prompted_engine
from textdiff.models import for_few_rows

PROMPTS = ([1, 40, 41], [1, *range(20, 31)], [1])
ROWS = ([5, 6, 7, 8], [9], [10, 11, 12, 13, 14, 15, 16, 17, 18], [5, 6, 7, 8], [19, 20], [5, 6, 9],
        [5, 6, 7, *range(30, 50)])  # rows 0, 5, 6 share their start after one prompt, row 3 is row 0 after another
OWNERS = (0, 1, 2, 1, 0, 0, 0)


def llama(**overrides):
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                      **overrides)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


def gpt2():
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4,
                                                                n_positions=128)).eval()


def qwen3():  # the Llama modules plus per-head query and key norms inside attention: the check must refuse it
    torch.manual_seed(0)
    config = transformers.Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                      max_position_embeddings=128)
    return transformers.Qwen3ForCausalLM(config).eval()


def full_logits(model, prompt, row):
    device = next(model.parameters()).device
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + row], device=device)).logits[0]
    return logits[len(prompt): len(prompt) + len(row)]


def full_log_probs(model, prompt, row):
    """``log p(row[j] | prompt, row[:j])`` of every token, from the model's forward on the two together."""
    logits = full_logits(model, prompt[:-1], prompt[-1:] + row[:-1]).double().cpu()
    return torch.log_softmax(logits, -1)[torch.arange(len(row)), row]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # batch independence is a bitwise property of one thread's matrix products
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("make, layout", [(llama, True), (lambda: llama(attention_bias=True), True),
                                          (lambda: for_few_rows(llama()), True), (gpt2, False), (qwen3, False)])
def test_engine_choice_and_scoring_logits_match_the_models_own_forward(make, layout, device):
    model = make().to(device)
    chosen = PromptedLM if layout and device == "cpu" else PlainLM  # CUDA keeps the plain forward until timed there
    assert type(prompted_engine(model)) is chosen
    engines = [PlainLM] + ([PromptedLM] if layout else [])
    expected = torch.cat([full_log_probs(model, PROMPTS[o], row) for o, row in zip(OWNERS, ROWS)])
    for engine_class in engines:
        engine = engine_class(model)
        prompts = [engine.prompt(p) for p in PROMPTS]
        for p, prompt in zip(PROMPTS, prompts):
            last = torch.log_softmax(full_logits(model, p[:-1], p[-1:])[0].double(), -1).cpu()
            assert torch.allclose(prompt.log_probs, last, atol=1e-5)
        assert engine.log_probs([], []).shape == (0,)
        got = engine.log_probs(ROWS, [prompts[o] for o in OWNERS])
        assert got.dtype == torch.float64 and got.shape == expected.shape
        assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
        if device != "cpu":
            continue  # CUDA kernels may depend on the batch: there the guarantee is identity in law
        pieces = got.split([len(row) for row in ROWS])
        for i, (row, owner) in enumerate(zip(ROWS, OWNERS)):  # the same bits alone, on a fresh and on a used engine
            fresh = engine_class(model)
            assert torch.equal(fresh.log_probs([row], [fresh.prompt(PROMPTS[owner])]), pieces[i])
            assert torch.equal(engine.log_probs([row], [prompts[owner]]), pieces[i])


@pytest.mark.parametrize("engine_class", [PlainLM, PromptedLM])
def test_a_prompt_run_after_its_head_scores_and_decodes_as_the_whole_prompt(engine_class, device):
    model = llama().to(device)
    engine = engine_class(model)
    ids = PROMPTS[1]
    head = engine.prompt(ids[:5])
    after, whole = engine.prompt(ids, after=head), engine.prompt(ids)
    assert after.ids == whole.ids and torch.allclose(after.log_probs, whole.log_probs, atol=1e-5)
    got, expected = (engine.log_probs(ROWS[:3], [prompt] * 3) for prompt in (after, whole))
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.equal(engine_class(model).log_probs(ROWS[:3], [after] * 3), got)  # its own bits, not the head's
    assert torch.equal(engine.prompt(ids, after=head).log_probs, after.log_probs)  # the head's cache stays as it was
    decoding = PlainDecoding(model, [after, whole])
    step = decoding.step(torch.tensor([5, 5], device=device))
    assert torch.allclose(step[0], step[1], atol=1e-4)
    for wrong in (ids[:5], [2, *ids[1:]]):
        with pytest.raises(ValueError, match="proper prefix"):
            engine.prompt(wrong, after=head)


@pytest.mark.parametrize("engine_class", [PlainLM, PromptedLM])
def test_the_next_token_distribution_after_a_row_is_the_full_forwards_whatever_shares_the_call(engine_class, device):
    model = llama().to(device)
    engine = engine_class(model)
    prompts = [engine.prompt(p) for p in PROMPTS]
    rows = [[], *ROWS]  # an empty row: its prompt's own distribution
    owners = [1, *OWNERS]
    assert engine.next_log_probs([], []).shape == (0, 64)
    got = engine.next_log_probs(rows, [prompts[o] for o in owners])
    assert got.dtype == torch.float64 and got.shape == (len(rows), 64)
    for row, owner, value in zip(rows, owners, got):
        prompt = PROMPTS[owner]
        expected = torch.log_softmax(full_logits(model, prompt[:-1], prompt[-1:] + row)[-1].double(), -1).cpu()
        assert torch.allclose(value, expected, atol=1e-5)
    if device == "cpu":
        fresh = engine_class(model)
        for row, owner, value in zip(rows, owners, got):  # alone, on a fresh engine and on this one: the same bits
            assert torch.equal(fresh.next_log_probs([row], [fresh.prompt(PROMPTS[owner])])[0], value)
            assert torch.equal(engine.next_log_probs([row], [prompts[owner]])[0], value)


def test_a_tree_that_keeps_almost_nothing_gives_the_same_bits_and_a_failed_call_leaves_it_as_it_was():
    model = llama()
    roomy, tight = PromptedLM(model), PromptedLM(model, cached_tokens=1)
    expected = roomy.log_probs(ROWS, [roomy.prompt(PROMPTS[o]) for o in OWNERS])
    for order in (range(len(ROWS)), reversed(range(len(ROWS)))):
        got = {i: tight.log_probs([ROWS[i]], [tight.prompt(PROMPTS[OWNERS[i]])]) for i in order}
        assert torch.equal(torch.cat([got[i] for i in range(len(ROWS))]), expected)
        assert len(tight.tree) <= max(len(row) for row in ROWS)  # only the last call's tokens are kept
    size = len(roomy.tree)
    with pytest.raises(IndexError):  # a token the embedding does not have: the call fails inside the model
        roomy.log_probs([[5, 6, 7, 99, 3]], [roomy.prompt(PROMPTS[0])])
    assert len(roomy.tree) == size
    with pytest.raises(ValueError, match="at least one token"):
        roomy.log_probs([[]], [roomy.prompt(PROMPTS[0])])
    again = roomy.log_probs(ROWS, [roomy.prompt(PROMPTS[o]) for o in OWNERS])
    assert torch.equal(again, expected)


@pytest.mark.parametrize("make, engine_class", [(llama, PromptedLM), (llama, PlainLM), (gpt2, PlainLM)])
def test_decoding_after_either_engines_prompts_gives_the_full_forward_logits_while_rows_leave(make, engine_class,
                                                                                               device):
    model = make().to(device)
    engine = engine_class(model)
    prompts = [engine.prompt(p) for p in PROMPTS[:2]]  # widths 3 and 12 share no bucket: decode them apart
    for prompt in prompts:
        owners = [prompt] * 3
        decoding = PlainDecoding(model, owners)
        drawn = [[], [], []]
        assert torch.allclose(decoding.first().cpu(), prompt.log_probs.expand(3, -1))
        alive = [0, 1, 2]
        for step, tokens in enumerate(([7, 8, 9], [10, 11, 12], [13, 14], [15, 16])):
            if step == 2:  # row 1 leaves
                decoding.keep(torch.tensor([0, 2], device=device))
                alive = [0, 2]
            for row, token in zip(alive, tokens):
                drawn[row].append(token)
            logits = decoding.step(torch.tensor(tokens, device=device))
            for row, got in zip(alive, logits):
                expected = full_logits(model, list(prompt.ids), drawn[row])[-1]
                assert torch.allclose(got, expected, atol=1e-5), (step, row)


def test_a_model_without_the_layout_is_never_probed_and_one_that_differs_is_refused():
    assert not PromptedLM.has_layout(gpt2())
    assert not PromptedLM.has_layout(llama(sliding_window=4))
    assert PromptedLM.has_layout(llama()) and PromptedLM(llama()).matches_model()
    assert PromptedLM.has_layout(qwen3()) and not PromptedLM(qwen3()).matches_model()
