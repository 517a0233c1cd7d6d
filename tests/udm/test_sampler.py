"""The generic reverse loop: caching changes nothing but the cost, protected tokens, hooks, trajectory, draws,
reproducibility and bad input."""

from __future__ import annotations

import pytest
import torch

from textdiff.udm import (Batch, MaskingProcess, ReplaceDiffProcess, Trajectory, X0Draw, make_process, make_template,
                          reverse_sample)
from textdiff.udm.sampler import forbid_tokens

V, MASK = 7, 7


class ContextPredictor:
    """A deterministic, time-agnostic toy predictor whose logits depend on the whole visible context."""

    def __init__(self, out_vocab=V + 1):
        g = torch.Generator().manual_seed(0)
        self.table = torch.randn(64, out_vocab, generator=g, dtype=torch.float64)
        self.calls = 0

    def __call__(self, x: Batch, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        pos = torch.arange(x.ids.shape[1])
        key = (x.ids.sum(-1, keepdim=True) * 3 + pos[None]) % 64
        return self.table[key]


@pytest.mark.parametrize("process", [MaskingProcess(MASK, "linear"), MaskingProcess(MASK, "cosine"),
                                     MaskingProcess(MASK, "count")], ids=repr)
def test_cache_changes_cost_not_samples(process):
    template = make_template(16, 12)
    outs, rows = [], []
    for cache in (False, True):
        out = reverse_sample(process, ContextPredictor(), template, 48 if not process.schedule.is_count else 12,
                             seed=3, cache=cache)
        outs.append(out.ids)
        rows.append(out.stats.network_rows)
    assert torch.equal(outs[0], outs[1])
    if process.schedule.is_count:  # every row reveals a token at every step: nothing to reuse
        assert rows[1] == rows[0]
    else:
        assert rows[1] < rows[0]


def test_prefix_and_protected_positions_are_kept(device):
    template = make_template(32, 10, prefix=[1, 2, 3], device=device)
    template.ids[:, 7] = 5
    template.protected[:, 7] = True
    for name in ("mask", "replace_diff", "replace_any"):
        process = make_process(name, mask_id=MASK, vocab_size=V)
        pred = ContextPredictor(MASK + 1 if name == "mask" else V)
        out = reverse_sample(process, lambda x, t: pred(x.to("cpu"), t).to(device), template, 10, seed=0)
        assert (out.ids[:, :3] == torch.tensor([1, 2, 3], device=device)).all()
        assert (out.ids[:, 7] == 5).all()
        assert not (out.ids == MASK).any()


class PositionalPredictor(ContextPredictor):
    """:class:`ContextPredictor` that also offers its logits at chosen positions only."""

    def logits_at(self, x: Batch, t: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        self.positional_calls = getattr(self, "positional_calls", 0) + 1
        return self(x, t)[where]


def test_logits_hook_steers_every_step():
    """``forbid_tokens`` steers the dense path and the logits-only-where-drawn path alike (same seeded samples); a hook
    that does not take ``PositionLogits`` makes the loop ask a ``logits_at`` predictor for dense logits."""
    outs = []
    for predictor in (ContextPredictor(), PositionalPredictor()):
        outs.append(reverse_sample(MaskingProcess(MASK), predictor, make_template(64, 8), 8, seed=1,
                                   logits_hooks=[forbid_tokens([0, 2, 4, 6])]).ids)
        assert (outs[-1] % 2 == 1).all()
    assert torch.equal(*outs) and predictor.positional_calls > 0

    def dense_only(logits, x, t, s):
        return forbid_tokens([0, 2, 4, 6])(logits, x, t, s)

    predictor = PositionalPredictor()
    out = reverse_sample(MaskingProcess(MASK), predictor, make_template(64, 8), 8, seed=1, logits_hooks=[dense_only])
    assert torch.equal(out.ids, outs[0]) and getattr(predictor, "positional_calls", 0) == 0


def test_trajectory_records_every_step_and_renders():
    traj = Trajectory()
    out = reverse_sample(MaskingProcess(MASK, "count"), ContextPredictor(), make_template(2, 6), 6, seed=2,
                         trajectory=traj)
    assert traj.times[0] == 1.0 and traj.times[-1] == 0.0 and len(traj.states) == 7
    assert torch.equal(traj.states[-1].ids, out.ids)
    masked_counts = [int((s.ids == MASK).sum()) for s in traj.states]
    assert masked_counts == [12, 10, 8, 6, 4, 2, 0]  # one token per row per step (count form)
    html = traj.to_html(lambda i: f"w{i}")
    assert html.count("<span") == 12 and "t=" in html


def test_seeds_reproduce():
    kw = dict(process=MaskingProcess(MASK), predictor=ContextPredictor(), template=make_template(8, 8), steps=4)
    a, b = reverse_sample(**kw, seed=5).ids, reverse_sample(**kw, seed=5).ids
    assert torch.equal(a, b) and not torch.equal(a, reverse_sample(**kw, seed=6).ids)


def test_x0_draw_modes():
    logits = torch.randn(500, V, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    assert torch.equal(X0Draw("argmax")(logits, g), logits.argmax(-1))
    assert torch.equal(X0Draw(temperature=1e-6)(logits, g), logits.argmax(-1))  # temperature → 0 is argmax
    top2 = X0Draw(top_k=2)(logits, g)
    assert (logits.gather(-1, top2[:, None]) >= logits.topk(2).values[:, 1:]).all()
    assert X0Draw().exact and not X0Draw(top_p=0.9).exact


def test_replacement_reverse_runs_with_uniform_prior():
    out = reverse_sample(ReplaceDiffProcess(V, "count"), ContextPredictor(V), make_template(16, 6), 6, seed=0)
    assert ((out.ids >= 0) & (out.ids < V)).all()


def test_bad_input_is_rejected_with_clear_errors():
    pred = ContextPredictor()
    with pytest.raises(ValueError, match="length"):
        make_template(4, 0)
    for process in (MaskingProcess(MASK), ReplaceDiffProcess(V), make_process("replace_any", vocab_size=V)):
        with pytest.raises(ValueError, match="length must be >= 1"):  # only deletion grows from width 0
            reverse_sample(process, pred, torch.zeros(2, 0, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="steps"):
        reverse_sample(MaskingProcess(MASK), pred, make_template(2, 4), 0)
    with pytest.raises(ValueError, match="steps"):
        reverse_sample(MaskingProcess(MASK, "count"), pred, make_template(2, 4), 5)  # > T = l
    with pytest.raises(ValueError, match="process must be one of"):
        make_process("gaussian", mask_id=MASK)
    with pytest.raises(ValueError, match="schedule must be one of"):
        MaskingProcess(MASK, "quadratic")
    with pytest.raises(ValueError, match="corrector"):
        MaskingProcess(MASK, corrector="magic")
    with pytest.raises(ValueError, match="x0_mode"):
        X0Draw("beam")
    with pytest.raises(ValueError, match=r"logits \[B, L, V\]"):
        reverse_sample(MaskingProcess(MASK), lambda x, t: torch.zeros(2, 3), make_template(2, 4), 4)
    with pytest.raises(ValueError, match="prefix"):
        make_template(2, 3, prefix=[1, 2, 3])
