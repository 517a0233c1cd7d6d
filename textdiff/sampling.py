"""Text from the diffusion samplers, optionally steered (docs/guidance.md#using-guidance): :func:`sample_texts` is the
Python front door of ``textdiff sample``; :class:`Guidance` says what to steer toward and turns into what each sampler
takes.

Kinds (registered in :data:`GUIDANCE`):

* ``classifier``: ``w(x) = p(y | x)`` of a classifier (default: the shipped one of the label's task, trained on
  partially masked sentences so it also reads diffusion states);
* ``similarity``: ``log w(x) = cos(embed(x), embed(reference))`` under the all-MiniLM-L6-v2 sentence encoder;
* ``cfg``: classifier-free guidance with the label-conditional masked LM (masking diffusion only).

Per sampler: masking / deletion diffusion get :meth:`Guidance.logits_hooks` (candidate reweighting; exact for
one-token steps with a classifier of noisy states and scale 1), MH generation gets :meth:`Guidance.target_term`
(the target ``π · w^γ``, exact for every scale), MH-corrected Gibbs gets :meth:`Guidance.energy`, and the masking
sampler with ``cfg`` gets :meth:`Guidance.conditional_predictor`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from textdiff import checks
from textdiff.defaults import LABEL_TASK
from textdiff.guidance import (
    CandidateReweighting,
    ClassifierFreePredictor,
    ClassifierScore,
    GuidanceScore,
    SimilarityScore,
    require_same_vocabulary,
    target_term,
    tilted_energy,
)
from textdiff.registry import Registry
from textdiff.udm import PROCESSES, Trajectory, X0Draw, forbid_tokens, make_process, reverse_sample
from textdiff.udm.deletion import decode, predictor_for, process_for, sample_delete
from textdiff.udm.sampler import make_template

#: guidance kinds: ``score(guidance, tokenizer) -> GuidanceScore``; a kind with ``conditional_model = True`` returns
#: ``None`` and steers by replacing the model instead (only the masking sampler takes it)
GUIDANCE = Registry("guidance")


@GUIDANCE.register("classifier")
def _classifier_score(guidance: Guidance, tokenizer) -> GuidanceScore:
    from textdiff.models.hub import load_classifier

    classifier = load_classifier(guidance.classifier, label=guidance.label, device=guidance.device,
                                 dtype=guidance.dtype)
    if tokenizer is not None:
        require_same_vocabulary(tokenizer, classifier.tokenizer, "classifier")
    return ClassifierScore(classifier, guidance.label)


@GUIDANCE.register("similarity")
def _similarity_score(guidance: Guidance, tokenizer) -> GuidanceScore:
    from textdiff.models.sentence_encoder import SentenceEncoder

    encoder = SentenceEncoder.from_pretrained(guidance.encoder, device=guidance.device, dtype=guidance.dtype)
    if tokenizer is not None:
        require_same_vocabulary(tokenizer, encoder.tokenizer, "sentence encoder")
    return SimilarityScore(encoder, guidance.reference)


@GUIDANCE.register("cfg")
def _free(guidance: Guidance, tokenizer) -> None:
    return None


_free.conditional_model = True  # it replaces the sampler's model (Guidance.conditional_predictor) instead of scoring


@dataclass(frozen=True)
class Guidance:
    """What to steer toward (``label`` or ``reference``), how (``kind``) and how hard (``scale``: ``γ`` for a
    score, ``w`` for ``cfg``); a label is checked against the model that reads it when that model loads.
    ``classifier`` / ``encoder``: a directory or hub name instead of the default; ``top_k``: candidates reweighted per
    drawn position in diffusion; ``device``, ``dtype``: where and in which precision its models run (``auto``:
    bfloat16 on CUDA, float32 elsewhere)."""

    label: str | None = None
    scale: float = 4.0
    kind: str = "classifier"
    reference: str | Sequence[str] | None = None
    classifier: str | None = None
    encoder: str | None = None
    top_k: int = 16
    device: str = "cpu"
    dtype: str = "auto"

    def __post_init__(self):
        checks.one_of("guidance", self.kind, GUIDANCE)
        checks.finite_float("guidance_scale", self.scale, low=0)
        checks.positive_int("guidance_top_k", self.top_k)
        checks.dtype(self.dtype)
        if self.kind == "similarity" and not self.reference:
            raise ValueError("similarity guidance needs a reference text")
        if self.kind != "similarity" and self.label is None:
            raise ValueError(f"{self.kind} guidance needs a label ({', '.join(LABEL_TASK)} with the shipped models)")

    @property
    def conditional_model(self) -> bool:
        """Whether this guidance replaces the sampler's model (``cfg``) instead of scoring its states."""
        return getattr(GUIDANCE[self.kind], "conditional_model", False)

    def score(self, tokenizer=None) -> GuidanceScore | None:
        """The guidance score, its model checked against the sampler's ``tokenizer`` when given (``None`` for cfg)."""
        return GUIDANCE[self.kind](self, tokenizer)

    def logits_hooks(self, tokenizer) -> list[CandidateReweighting]:
        """Diffusion: candidate reweighting at every drawn position (none for ``cfg``)."""
        score = self.score(tokenizer)
        return [] if score is None else [CandidateReweighting(score, self.scale, tokenizer.mask_token_id, self.top_k)]

    def target_term(self) -> Callable[[Sequence[str]], object]:
        """MH generation: the soft term ``γ · log w(text)`` of the target."""
        return target_term(self._state_score(None), self.scale)

    def energy(self, base, tokenizer):
        """MH-corrected Gibbs: the energy ``E − γ · log w``."""
        return tilted_energy(base, self._state_score(tokenizer), self.scale)

    def _state_score(self, tokenizer) -> GuidanceScore:
        """:meth:`score` for samplers that can only tilt their target; ``ValueError`` for a kind that replaces the
        model."""
        score = self.score(tokenizer)
        if score is None:
            raise ValueError(f"{self.kind} guidance needs a conditional diffusion model; use --guidance classifier or "
                             "similarity with this sampler")
        return score

    def conditional_predictor(self, name: str | None = None):
        """``cfg``: ``(predictor, tokenizer, condition_id)`` of the conditional masked LM mixed with scale ``w``."""
        from textdiff.models.hub import load_conditional

        predictor, tokenizer, conditions = load_conditional(name, self.device, self.dtype)
        condition = conditions.id_of(self.label)
        mixed = ClassifierFreePredictor(predictor, position=conditions.position, null_id=conditions.null_id,
                                        scale=self.scale)
        return mixed, tokenizer, condition


def text_template(tokenizer, n: int, length: int, prefix: str | None, device, condition: int | None = None):
    """``[CLS] condition prefix … [SEP]`` rows (specials, condition token and prefix protected) of ``length`` content
    tokens."""
    prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else []
    head = [tokenizer.cls_token_id] if tokenizer.cls_token_id is not None else []
    head += [] if condition is None else [condition]
    tail = [tokenizer.sep_token_id] if tokenizer.sep_token_id is not None else []
    if len(prefix_ids) >= length:
        raise ValueError(f"prefix has {len(prefix_ids)} tokens; length must exceed it, got {length}")
    x = make_template(n, length + len(head) + len(tail), head + prefix_ids, device)
    if tail:
        x.ids[:, -1] = tail[0]
        x.protected[:, -1] = True
    return x


def check_process_options(process: str, options: dict) -> None:
    """``ValueError`` for a process option (``reveal``, ``kernel``) that ``process``'s constructor does not take."""
    accepted = inspect.signature(PROCESSES[process].__init__).parameters
    for name in options:
        if name not in accepted:
            raise ValueError(f"{name} does not apply to process {process!r}")


def sample_texts(n: int = 8, *, length: int = 32, process: str = "mask", model: str | None = None,
                 steps: int | None = None, schedule: str | None = None, corrector: str | None = None,
                 prefix: str | None = None, guidance: Guidance | None = None, draw: X0Draw | None = None,
                 seed: int | None = 0, cache: bool = True, allow_special: bool = False,
                 trajectory: Trajectory | None = None, progress: bool = False, device="cpu", dtype="auto",
                 **process_options) -> tuple[list[str], object]:
    """``(texts, tokenizer)``: ``n`` samples of the reverse ``process`` (``mask``, ``replace_*``: ``length`` tokens,
    ``prefix`` kept; ``delete``: grown from the empty sequence, ``steps`` default ``length``) on ``model`` (default:
    the shipped one of the process), optionally steered by ``guidance``. ``process_options``: ``reveal`` (mask),
    ``kernel`` (replace_diff). Special tokens are never drawn unless ``allow_special``. Model forwards run in ``dtype``
    (``auto``: bfloat16 on CUDA, float32 elsewhere; a ``guidance``'s models use its own ``dtype``)."""
    checks.positive_int("length", length)
    checks.positive_int("n", n)
    if steps is not None:
        checks.positive_int("steps", steps)
    process_class = PROCESSES.get_checked(process)
    check_process_options(process, process_options)
    from textdiff.models.hub import load_denoiser, load_insertion  # transformers loads on first use

    device = checks.device(device)
    dtype = checks.dtype(dtype, device)
    schedule = schedule or process_class.default_schedule
    free = guidance is not None and guidance.conditional_model
    if free and process != "mask":
        raise ValueError("cfg guidance needs process 'mask' (the shipped conditional model is a masking denoiser)")
    if process_class.variable_length:
        network, tokenizer = load_insertion(model, device, dtype)
        steps = steps or length
        hooks = guidance.logits_hooks(tokenizer) if guidance else []
        out = sample_delete(predictor_for(network, tokenizer), process_for(network, tokenizer, schedule,
                            corrector or "posterior"), n, steps=steps, draw=draw, seed=seed, trajectory=trajectory,
                            progress=progress, logits_hooks=hooks, device=device)
        return decode(tokenizer, out), tokenizer
    if free:
        predictor, tokenizer, condition = guidance.conditional_predictor(model)
        network, banned = predictor.predictor, [*tokenizer.all_special_ids, condition, predictor.null_id]
    else:
        predictor, tokenizer = load_denoiser(model, device, subs=process_class.subs_predictor, dtype=dtype)
        network, condition, banned = predictor, None, tokenizer.all_special_ids
    chosen = make_process(process, mask_id=tokenizer.mask_token_id, vocab_size=network.model.config.vocab_size,
                          schedule=schedule, corrector=corrector, **process_options)
    template = text_template(tokenizer, n, length, prefix, device, condition)
    steps = steps or int(template.corruptible.sum(-1).max())
    hooks = [] if allow_special else [forbid_tokens(banned)]
    hooks += guidance.logits_hooks(tokenizer) if guidance and not free else []
    out = reverse_sample(chosen, predictor, template, steps, draw=draw, seed=seed, cache="auto" if cache else False,
                         logits_hooks=hooks, trajectory=trajectory, progress=progress)
    kept = out.ids if condition is None else torch.cat([out.ids[:, :1], out.ids[:, 2:]], 1)
    return tokenizer.batch_decode(kept, skip_special_tokens=True), tokenizer
