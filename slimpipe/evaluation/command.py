"""``slimpipe eval`` (downstream tasks through lm-evaluation-harness) and ``slimpipe export --format hf``."""

from __future__ import annotations

import json
import logging
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from slimpipe.options import argument, command_options, option
from slimpipe.train.errors import ExportError  # torch-free: --help stays fast

log = logging.getLogger(__name__)

# SlimPajama-DC's downstream suite (the Open LLM Leaderboard settings it reports): task -> few-shot.
DEFAULT_TASKS: dict[str, int] = {"arc_challenge": 25, "hellaswag": 10, "mmlu": 5, "truthfulqa_mc2": 0}
RESULTS_FILE = "lm_eval.json"  # RUN/lm_eval.json: where `slimpipe eval` writes by default, compare reads
HUB_URL = "https://huggingface.co"
_MERGED_KEYS = ("results", "groups", "group_subtasks", "configs", "versions", "n-shot", "higher_is_better",
                "n-samples")


def parse_tasks(text: str) -> dict[str, int | None]:
    """``"arc_challenge:25,hellaswag"`` -> {task: few-shot or None (the task's own default)}."""
    out: dict[str, int | None] = {}
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        name, _, shots = item.partition(":")
        try:
            out[name.strip()] = int(shots) if shots.strip() else None
        except ValueError as exc:
            raise click.BadParameter(f"{item!r}: few-shot after ':' must be an integer", param_hint="--tasks") from exc
    if not out:
        raise click.BadParameter("no task named", param_hint="--tasks")
    return out


def hub_reachable(timeout: float = 3.0) -> tuple[bool, str]:
    """Whether the Hugging Face hub answers (and is not switched off by HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return False, f"{var} is set"
    try:
        with urllib.request.urlopen(urllib.request.Request(HUB_URL, method="HEAD"), timeout=timeout):
            return True, ""
    except Exception as exc:  # any network failure means: not reachable
        return False, f"{HUB_URL} is not reachable ({type(exc).__name__})"


def run_tasks(run: str, tasks: dict[str, int | None], *, include_path: str | None = None, batch_size: int = 8,
              device: str | None = None, limit: float | None = None, tokenizer: str | None = None,
              log_samples: bool = False, seed: int = 0) -> dict:
    """lm-eval's ``simple_evaluate`` on ``run`` through :class:`SlimpipeLM`, once per few-shot setting;
    the results dicts are merged into one (lm-eval's own shape)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from slimpipe.evaluation.lm import SlimpipeLM

    lm = SlimpipeLM(run, device=device, batch_size=batch_size, tokenizer=tokenizer)
    manager = None
    if include_path:  # indexing lm-eval's ~10k built-in task files takes tens of seconds: skip when unneeded
        local = TaskManager(include_path=include_path, include_defaults=False)
        manager = local if all(t in local.all_tasks for t in tasks) else None
    manager = manager or TaskManager(include_path=include_path)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        hint = f" under {include_path}" if include_path else " (pass --include-path DIR for local tasks)"
        raise click.ClickException(f"unknown lm-eval task(s) {', '.join(unknown)}{hint}")
    by_shots: dict[int | None, list[str]] = {}
    for name, shots in tasks.items():
        by_shots.setdefault(shots, []).append(name)
    merged: dict[str, Any] = {}
    for shots, names in by_shots.items():
        res = lm_eval.simple_evaluate(model=lm, tasks=names, num_fewshot=shots, limit=limit,
                                      task_manager=manager, log_samples=log_samples, random_seed=seed,
                                      numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)
        for key, value in res.items():
            if key in _MERGED_KEYS or key == "samples":
                merged.setdefault(key, {}).update(value or {})
            elif key not in merged:
                merged[key] = value
    merged["config"] = {**(merged.get("config") or {}), "model": "slimpipe", "model_args": f"pretrained={run}",
                        "batch_size": lm.batch_size, "device": str(lm.device)}
    merged["slimpipe"] = {"run": str(run), "source": lm.info.get("source"), "tokenizer": lm.info.get("tokenizer"),
                          "tasks": {t: s for t, s in tasks.items()}, "max_length": lm.max_length}
    return merged


def task_summary(results: dict) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} of the numeric headline metrics (``acc,none`` -> ``acc``; no stderr)."""
    out: dict[str, dict[str, float]] = {}
    for task, metrics in (results.get("results") or {}).items():
        for key, value in metrics.items():
            metric, _, filt = key.partition(",")
            if "stderr" in metric or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            if filt not in ("none", ""):
                metric = f"{metric}[{filt}]"
            out.setdefault(task, {})[metric] = float(value)
    return out


@dataclass(frozen=True, kw_only=True)
class EvalCommand:
    """``slimpipe eval``'s arguments and options."""

    run: str = argument()
    tasks: str | None = option("--tasks", help="Comma-separated lm-eval tasks, each optionally NAME:FEWSHOT (e.g. "
                               "arc_challenge:25,hellaswag:10). Default: SlimPajama-DC's suite arc_challenge:25, "
                               "hellaswag:10, mmlu:5, truthfulqa_mc2:0 (needs the Hugging Face hub).")
    include_path: str | None = option("--include-path", type=click.Path(exists=True, file_okay=False),
                                      help="Folder of extra lm-eval task YAMLs (local tasks, e.g. tests/lm_eval_tasks).")
    batch_size: int = option("--batch-size", type=int, default=8, show_default=True, help="Requests per forward pass.")
    limit: float | None = option("--limit", type=float,
                                 help="Only the first N documents per task (a fraction if < 1), for a smoke run.")
    device: str | None = option("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available).")
    tokenizer: str | None = option("--tokenizer",
                                   help="Tokenizer to use when the run has none (gpt2, a tokenizer.json, a folder).")
    log_samples: bool = option("--log-samples", is_flag=True,
                               help="Also write every request and response (lm-eval's samples).")
    seed: int = option("--seed", type=int, default=0, show_default=True, help="Seed for few-shot sampling.")
    output: str | None = option("-o", "--output",
                                help=f"Results JSON (default: RUN/{RESULTS_FILE}, where compare finds it).")


@click.command(name="eval")
@command_options(EvalCommand)
def eval_command(opts: EvalCommand) -> None:
    """Score RUN (a run directory or an export) on lm-evaluation-harness tasks; writes lm-eval's results dict."""
    from slimpipe import storage

    try:
        import slimpipe.evaluation.lm  # noqa: F401  (needs lm-eval; registers --model slimpipe)
    except ModuleNotFoundError as exc:
        raise click.ClickException(f"lm-evaluation-harness is not installed ({exc.name}); "
                                   "pip install 'slimpipe[eval]'") from exc

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run, batch_size = opts.run, opts.batch_size
    if opts.tasks:
        chosen = parse_tasks(opts.tasks)
    else:
        ok, why = hub_reachable()
        if not ok:
            raise click.ClickException(
                f"the default tasks (SlimPajama-DC's arc_challenge, hellaswag, mmlu, truthfulqa_mc2) need the "
                f"Hugging Face hub, but {why}; pass --tasks NAME[:FEWSHOT],... with --include-path DIR for local tasks")
        chosen = dict(DEFAULT_TASKS)
    if batch_size < 1:
        raise click.BadParameter("must be >= 1", param_hint="--batch-size")
    out = opts.output or str(Path(run) / RESULTS_FILE)
    try:
        results = run_tasks(run, chosen, include_path=opts.include_path, batch_size=batch_size, device=opts.device,
                            limit=opts.limit, tokenizer=opts.tokenizer, log_samples=opts.log_samples, seed=opts.seed)
    except ExportError as exc:
        raise click.ClickException(str(exc)) from exc
    from lm_eval.utils import handle_non_serializable

    storage.write_json_atomic(out, json.loads(json.dumps(results, default=handle_non_serializable)))
    for task, metrics in task_summary(results).items():
        click.echo(f"{task:<28}" + "  ".join(f"{m} {v:.4f}" for m, v in metrics.items()))
    click.echo(f"wrote {out}")


@dataclass(frozen=True, kw_only=True)
class ExportCommand:
    """``slimpipe export``'s arguments and options."""

    run: str = argument(type=click.Path(exists=True, file_okay=False))
    fmt: str = option("--format", type=click.Choice(["hf"]), default="hf", show_default=True,
                      help="hf: a Hugging Face transformers folder (trust_remote_code) that lm-eval's --model hf loads.")
    output: str = option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Folder to write.")
    tokenizer: str | None = option("--tokenizer",
                                   help="Tokenizer when the run has none (gpt2, a tokenizer.json, a mix's tokenizer/).")
    overwrite: bool = option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")


@click.command(name="export")
@command_options(ExportCommand)
def export_command(opts: ExportCommand) -> None:
    """Export RUN's model (RUN/model, or its latest checkpoint) and tokenizer for other tools."""
    from slimpipe.hf.export import export_hf

    try:
        out = export_hf(opts.run, opts.output, tokenizer=opts.tokenizer, overwrite=opts.overwrite)
    except ExportError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"wrote {out}: AutoModelForCausalLM.from_pretrained('{out}', trust_remote_code=True); "
               f"lm_eval --model hf --model_args pretrained={out},trust_remote_code=True")
