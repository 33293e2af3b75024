"""Multi-phase training data: one run, several mixes and context lengths, one learning-rate schedule.

A phases file lists the phases in order (BTLM: 75% of tokens at 2k context, then 8k; Crystal: a
language-heavy mix, then a code-heavier one; language adaptation: embeddings only, then everything)::

    phases:
      - {mix: runs/mix-web, tokens: 300M, seq_len: 2048}
      - {mix: runs/mix-code, tokens: 100M, seq_len: 8192}
      - {mix: runs/mix-code, steps: 50, train: embeddings}   # ``steps`` instead of ``tokens``; optional name

The loop draws every batch from :class:`TrainingData`: phase ``i`` owns optimizer steps
``[start_i, end_i)``; inside it, the data position is ``(step - start_i) * global_batch`` in a seeded
permutation of that phase's training set, so (as for a single mix) the step alone is the whole data
state and a checkpoint taken anywhere, phase boundaries included, resumes bit for bit. A plain
one-mix run is the one-phase case of the same object. The global batch (in sequences) is the same in
every phase, so a longer-context phase has more tokens per step.

Bad input fails before training, with one line: a phase naming a folder that is not a packed mix,
phases whose mixes use different tokenizers, unknown keys, a phase without ``tokens`` or ``steps``.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from slimpipe.mix.packed import INDEX, PackedDataset, ShuffledSampler, train_path
from slimpipe.units import parse_count

if TYPE_CHECKING:  # torch stays out of this module's imports: report plots draw phase boundaries with it
    import torch

    from slimpipe.train.data import Mix
    from slimpipe.train.plan import Plan, TrainConfig

log = logging.getLogger(__name__)

PHASE_KEYS = {"mix", "tokens", "steps", "seq_len", "train", "name"}
TRAINABLE = ("all", "embeddings")


def _count(value: Any, what: str) -> int:
    try:
        return parse_count(str(value))
    except ValueError as exc:
        raise ValueError(f"{what}: not a positive count: {value!r}") from exc


def load_phases(path: str | Path) -> list[dict]:
    """Read and check a phases YAML file (a list, or ``{phases: [...]}``); relative mix paths are taken
    relative to the file's folder. Returns plain dicts (what ``TrainConfig.phases`` holds)."""
    import yaml  # here, not at import time: the trainer runs without PyYAML (benchmarks/bench_gpu.py)

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"phases file {p}: {exc.__class__.__name__}: {str(exc).splitlines()[0]}") from exc
    if isinstance(data, dict):
        data = data.get("phases")
    if not isinstance(data, list) or not data:
        raise ValueError(f"phases file {p}: expected a non-empty list of phases (or phases: [...])")
    phases = []
    for i, raw in enumerate(data, 1):
        if not isinstance(raw, dict) or "mix" not in raw:
            raise ValueError(f"phases file {p}: phase {i} must be a mapping with a mix: folder")
        mix = Path(str(raw["mix"])).expanduser()
        phases.append({**raw, "mix": str(mix if mix.is_absolute() else (p.parent / mix))})
    return normalise_phases(phases)


def normalise_phases(phases: list[dict]) -> list[dict]:
    """Validate phase dicts (keys, counts, trainable part) without touching the data."""
    out = []
    for i, given in enumerate(phases, 1):
        raw = {k: v for k, v in given.items() if v is not None}  # normalised dicts hold None for unset keys
        unknown = set(raw) - PHASE_KEYS
        if unknown:
            raise ValueError(f"phase {i}: unknown keys {sorted(unknown)} (allowed: {sorted(PHASE_KEYS)})")
        if ("tokens" in raw) == ("steps" in raw):
            raise ValueError(f"phase {i}: give exactly one of tokens: or steps:")
        ph = {"name": str(raw.get("name") or f"phase{i}"), "mix": str(raw["mix"]),
              "tokens": _count(raw["tokens"], f"phase {i} tokens") if "tokens" in raw else None,
              "steps": _count(raw["steps"], f"phase {i} steps") if "steps" in raw else None,
              "seq_len": _count(raw["seq_len"], f"phase {i} seq_len") if raw.get("seq_len") else None,
              "train": str(raw.get("train", "all"))}
        if ph["train"] not in TRAINABLE:
            raise ValueError(f"phase {i}: train: must be one of {TRAINABLE}, not {ph['train']!r}")
        out.append(ph)
    return out


def check_mixes(phases: list[dict]) -> str:
    """Every phase's mix exists and all share one tokenizer; returns that tokenizer's identity."""
    seen: dict[str, tuple[str, str]] = {}
    for i, ph in enumerate(phases, 1):
        index = train_path(ph["mix"]) / INDEX
        if not index.is_file():
            what = "does not exist" if not Path(ph["mix"]).exists() else "is not a packed mix (no train/index.json)"
            raise ValueError(f"phase {i} ({ph['name']}): mix {ph['mix']} {what}")
        ds = PackedDataset(train_path(ph["mix"]))
        ident = str(ds.tokenizer.get("identity") or f"vocab{ds.vocab_size}/eos{ds.eos_id}")
        seen.setdefault(ident, (ph["name"], ph["mix"]))
    if len(seen) > 1:
        names = "; ".join(f"{n} ({m}) uses {ident[:12]}" for ident, (n, m) in seen.items())
        raise ValueError(f"phases use different tokenizers: {names}")
    return next(iter(seen))


@dataclass
class Phase:
    name: str
    mix_dir: str
    dataset: PackedDataset
    seq_len: int
    start: int  # first optimizer step of the phase (0-based count of completed steps)
    end: int
    train: str = "all"
    sampler: ShuffledSampler | None = None

    @property
    def steps(self) -> int:
        return self.end - self.start


class TrainingData:
    """The training batches of a run, phase by phase (one phase for a plain one-mix run)."""

    def __init__(self, phases: list[Phase], global_batch: int, seed: int) -> None:
        self.phases = phases
        self.global_batch = int(global_batch)
        for ph in phases:
            ph.sampler = ShuffledSampler(ph.dataset, seed)
        self._applied: int | None = None
        self._tokens_before = np.cumsum([0] + [ph.steps * global_batch * ph.seq_len for ph in phases])

    @property
    def train_set(self) -> PackedDataset:
        """The last phase's training set (its index goes to config.json; its tokenizer to the export)."""
        return self.phases[-1].dataset

    @property
    def total_steps(self) -> int:
        return self.phases[-1].end

    def phase_index(self, step: int) -> int:
        """The phase that the update after ``step`` completed steps belongs to."""
        for i, ph in enumerate(self.phases):
            if step < ph.end:
                return i
        return len(self.phases) - 1

    def batch(self, step: int) -> np.ndarray:
        """All ``global_batch`` rows of optimizer step ``step + 1`` (``(B, seq_len + 1)`` int64)."""
        ph = self.phases[self.phase_index(step)]
        assert ph.sampler is not None
        idx = ph.sampler.indices((step - ph.start) * self.global_batch, self.global_batch)
        return ph.dataset.get_batch(idx)

    def tokens_at(self, step: int) -> int:
        """Training tokens consumed once ``step`` optimizer steps are done."""
        for i, ph in enumerate(self.phases):
            if step <= ph.end or i == len(self.phases) - 1:
                return int(self._tokens_before[i] + (step - ph.start) * self.global_batch * ph.seq_len)
        return 0

    def prepare_step(self, model: torch.nn.Module, step: int) -> None:
        """Freeze/unfreeze parameters when the phase changes (``train: embeddings`` trains only the
        token embedding, which is tied to the output layer). Parameters without gradients are skipped
        by AdamW, so their moments stay as they were."""
        i = self.phase_index(step)
        if i == self._applied:
            return
        only_embeddings = self.phases[i].train == "embeddings"
        for name, p in model.named_parameters():
            p.requires_grad_(not only_embeddings or name.startswith("wte"))
        if self._applied is not None:
            log.info("phase %d/%d (%s) from step %d: %s, seq_len %d", i + 1, len(self.phases),
                     self.phases[i].name, step, self.phases[i].mix_dir, self.phases[i].seq_len)
        self._applied = i

    def describe(self) -> list[dict]:
        """The ``phases`` list of metrics.json and config.json."""
        return [{"name": ph.name, "mix": ph.mix_dir, "seq_len": ph.seq_len, "train": ph.train,
                 "start_step": ph.start, "end_step": ph.end, "steps": ph.steps,
                 "start_tokens": int(self._tokens_before[i]), "end_tokens": int(self._tokens_before[i + 1])}
                for i, ph in enumerate(self.phases)]


def _eval_sets(phases: list[dict], seq_len: int) -> dict[str, PackedDataset]:
    """Each source's held-out set, from the last phase whose mix has it (so a run that moves from one
    mix to another is scored on the sources of both: forgetting shows), at ``seq_len`` where it divides
    the stored length, else at the longest length below it that does (never beyond the model's context)."""
    from slimpipe.train.data import Mix

    sets: dict[str, PackedDataset] = {}
    for ph in phases:
        for name, ds in Mix.open(ph["mix"]).evals.items():
            n = ds.stored_seq_len
            sets[name] = PackedDataset(ds.path, max(d for d in range(1, min(n, seq_len) + 1) if n % d == 0))
    return sets


def open_training_data(cfg: TrainConfig, world: int, device: torch.device, mix: Mix | None = None
                       ) -> tuple[TrainingData, dict[str, PackedDataset], Plan]:
    """Resolve the run's plan and open its data: ``cfg.phases`` when given, else the mix (``mix``, the
    run's already opened :class:`~slimpipe.train.data.Mix`, or ``cfg.mix_dir``)."""
    from slimpipe.train.data import Mix
    from slimpipe.train.plan import plan_run
    from slimpipe.train.presets import load_preset

    if not cfg.phases:
        mix = Mix.open(mix if mix is not None else cfg.mix_dir)
        plan = plan_run(cfg, mix.train.stored_seq_len, mix.train.vocab_size, world, device)
        if plan.seq_len != mix.train.seq_len:
            mix = mix.at(plan.seq_len)
        phase = Phase("train", str(cfg.mix_dir), mix.train, plan.seq_len, 0, plan.total_steps)
        return TrainingData([phase], plan.global_batch, cfg.seed), mix.evals, plan

    if cfg.max_steps or cfg.tokens:
        raise ValueError("--max-steps/--tokens do not apply with --phases: give tokens: or steps: per phase")
    specs = normalise_phases(cfg.phases)
    check_mixes(specs)
    plans, phases, start = [], [], 0
    for i, spec in enumerate(specs, 1):
        ds = PackedDataset(train_path(spec["mix"]))
        sub = dataclasses.replace(cfg, mix_dir=spec["mix"], seq_len=spec["seq_len"] or cfg.seq_len,
                                  tokens=spec["tokens"], max_steps=spec["steps"], phases=None)
        try:
            plan = plan_run(sub, ds.stored_seq_len, ds.vocab_size, world, device)
        except ValueError as exc:
            raise ValueError(f"phase {i} ({spec['name']}): {exc}") from exc
        if plans and (plan.global_batch, plan.micro_batch) != (plans[0].global_batch, plans[0].micro_batch):
            raise ValueError(f"phase {i} ({spec['name']}): batch differs from phase 1")
        plans.append(plan)
        phases.append(Phase(spec["name"], spec["mix"], PackedDataset(train_path(spec["mix"]), plan.seq_len),
                            plan.seq_len, start, start + plan.total_steps, spec["train"]))
        start += plan.total_steps
    if world > 1 and any(ph.train != "all" for ph in phases):
        raise ValueError("train: embeddings phases run in one process only (DDP needs a fixed set of trainable "
                         "parameters)")
    data = TrainingData(phases, plans[0].global_batch, cfg.seed)
    total = data.total_steps
    frac = load_preset(cfg.model).train.get("warmup_fraction", 0.01)
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else round(frac * total)
    model = dict(plans[0].model, max_seq_len=max(p.model["max_seq_len"] for p in plans))
    plan = dataclasses.replace(plans[-1], total_steps=total, warmup_steps=int(min(warmup, total)), model=model,
                               phases=[{k: v for k, v in d.items() if k not in ("start_tokens", "end_tokens")}
                                       for d in data.describe()])
    return data, _eval_sets(specs, phases[-1].seq_len), plan


def phase_boundaries(metrics: dict) -> list[tuple[float, str]]:
    """``(tokens, name)`` where each phase after the first starts, from a run's metrics.json."""
    return [(float(ph["start_tokens"]), str(ph["name"])) for ph in (metrics.get("phases") or [])[1:]]


def draw_phase_boundaries(ax: Any, metrics: dict, color: str | None = None) -> None:
    """Dashed vertical lines (labelled with the phase name) at a run's phase boundaries on a tokens axis."""
    for tokens, name in phase_boundaries(metrics):
        ax.axvline(tokens, ls="--", lw=0.8, color=color or "0.5", alpha=0.8)
        ax.annotate(name, (tokens, 1.0), xycoords=("data", "axes fraction"), rotation=90, va="top",
                    ha="right", fontsize=7, color=color or "0.4")


def recipe_inputs(mix_dir: str | None, phases_file: str | None, eval_seq_lens: str | None
                  ) -> tuple[str, list[dict] | None, list[int] | None]:
    """``slimpipe train``'s MIX_DIR / ``--phases`` / ``--eval-seq-lens`` -> (mix_dir, phases, lengths)."""
    if phases_file and mix_dir:
        raise ValueError("give MIX_DIR or --phases FILE, not both")
    if not phases_file and not mix_dir:
        raise ValueError("missing MIX_DIR (or --phases FILE)")
    phases = load_phases(phases_file) if phases_file else None
    lengths = None
    if eval_seq_lens:
        try:
            lengths = sorted({int(x) for x in eval_seq_lens.replace(" ", "").split(",") if x})
        except ValueError:
            raise ValueError(f"--eval-seq-lens: expected comma-separated integers, got {eval_seq_lens!r}") from None
        if not lengths or lengths[0] < 1:
            raise ValueError(f"--eval-seq-lens: expected positive lengths, got {eval_seq_lens!r}")
    return (phases[-1]["mix"] if phases else str(mix_dir)), phases, lengths


def recipe_summary(metrics: dict) -> list[str]:
    """Lines ``slimpipe train`` prints for the recipes: phases, forgetting after --init-from, and bits
    per byte per context length after --eval-seq-lens."""
    lines = []
    if len(metrics.get("phases") or []) > 1:
        lines.append("phases: " + " -> ".join(f"{p['name']} ({p['steps']} steps, seq_len {p['seq_len']}"
                                                f"{', embeddings only' if p['train'] == 'embeddings' else ''})"
                                                for p in metrics["phases"]))
    init = metrics.get("init_from")
    if init:
        lines.append(f"from {init['run']} step {init['step']}: bits per byte before -> after (+ = forgotten)")
        for name, f in init.get("forgetting", {}).items():
            lines.append(f"  {name:<14}{f['before']:>9.4f} ->{f['after']:>8.4f}  {f['delta']:+.4f}")
    cl = metrics.get("context_length")
    if cl:
        lines.append(f"total bits per byte by context length (trained at {cl['train_seq_len']}): plain / interpolated")
        for i, n in enumerate(cl["lengths"]):
            lines.append(f"  {n:>7}{cl['bpb']['plain']['total'][i]:>9.4f} /{cl['bpb']['interpolated']['total'][i]:>8.4f}")
    return lines
