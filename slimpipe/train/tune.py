"""``slimpipe tune MIX --widths 64,128,256 --lrs ... -o OUT``: muP hyperparameter transfer, the BTLM way.

Train small proxies of the model (the ``--model`` preset's depth and head size, widths ``--widths``) with
muP for every learning rate in ``--lrs`` and every base init std in ``--init-stds``, score each by its
held-out bits per byte, and write the values that are best across the proxies as a preset:

    OUT/mup.yaml       the base preset with ``mup: true, mup_base_lr, mup_base_init_std, mup_base_width``;
                       under muP these are width-independent, so change d_model / n_head / d_ff to any
                       width (or copy the ``mup_*`` lines into another preset) and train with ``--model``
    OUT/tune.json      every trial (width, lr, init std, bpb, diverged), the best per width, the choice
    OUT/report.md      the grid as a table per init std, best per width marked
    OUT/runs/<trial>/  each proxy's run folder (a rerun skips trials that already have metrics.json)

"Best across the proxies" is the grid point with the smallest mean excess over each width's best bits
per byte. ``--sp`` runs the same sweep in the standard parametrisation (init std = ``init_std``), which
is what ``benchmarks/bench_mup.py`` compares against: under SP the best LR moves with width.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path

import click

log = logging.getLogger(__name__)


def parse_floats(text: str, what: str) -> list[float]:
    try:
        values = [float(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise ValueError(f"{what}: expected comma-separated numbers, got {text!r}") from None
    if not values or any(not math.isfinite(v) or v <= 0 for v in values):
        raise ValueError(f"{what}: expected positive numbers, got {text!r}")
    return sorted(set(values))


def proxy_preset(base: str, width: int, *, mup: bool, init_std: float, seq_len: int | None = None,
                 batch_size: int | None = None) -> dict:
    """The ``base`` preset (name or YAML) at ``width``: same depth and head size, SwiGLU width rule."""
    from slimpipe.train.model import swiglu_width
    from slimpipe.train.presets import load_preset  # torch is imported on use, not at import (--help)

    p = load_preset(base)
    m = p.model
    head = m.head_dim
    if width % head:
        raise ValueError(f"width {width} is not a multiple of {p.name}'s head size {head}")
    model = {k: v for k, v in dataclasses.asdict(m).items() if k not in ("attention",)}
    model.update(d_model=width, n_head=width // head, d_ff=swiglu_width(width), mup=mup)
    model["mup_base_init_std" if mup else "init_std"] = float(init_std)
    train = dict(p.train)
    train.pop("tokens", None)
    train.pop("lr", None)
    if seq_len:
        train["seq_len"] = seq_len
        model["max_seq_len"] = max(seq_len, model["max_seq_len"])
    if batch_size:
        train["batch_size"] = batch_size
        train["micro_batch"] = min(batch_size, train.get("micro_batch") or batch_size)
    return {"name": f"{p.name}-w{width}", "model": model, "train": train}


def _write_yaml(path: Path, data: dict, header: str = "") -> None:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(header + yaml.safe_dump(data, sort_keys=False))
    tmp.replace(path)


def sweep(mix_dir: str | Path, out: str | Path, *, widths: list[int], lrs: list[float], init_stds: list[float],
          model: str = "tiny", steps: int = 100, mup: bool = True, seed: int = 1337, seq_len: int | None = None,
          batch_size: int | None = None, threads: int | None = None, device: str | None = None) -> dict:
    """Train every (width, lr, init std) proxy and summarise; returns what ``tune.json`` holds."""
    from slimpipe.train.loop import train
    from slimpipe.train.plan import TrainConfig

    out = Path(out)
    trials = []
    for w in widths:
        for std in init_stds:
            preset = proxy_preset(model, w, mup=mup, init_std=std, seq_len=seq_len, batch_size=batch_size)
            yaml_path = out / "proxies" / f"w{w}_std{std:g}.yaml"
            _write_yaml(yaml_path, preset)
            for lr in lrs:
                tag = f"{'mup' if mup else 'sp'}_w{w}_lr{lr:g}_std{std:g}"
                run = out / "runs" / tag
                trial = {"width": w, "lr": lr, "init_std": std, "run": str(run)}
                if not (run / "metrics.json").is_file():
                    cfg = TrainConfig(mix_dir=str(mix_dir), out_dir=str(run), model=str(yaml_path), max_steps=steps,
                                      lr=lr, mup=mup, seed=seed, eval_interval=0, export=False, threads=threads,
                                      device=device, keep_checkpoints=1, resume=(run / "train_log.jsonl").exists())
                    try:
                        train(cfg)
                    except FloatingPointError as exc:
                        trial.update(bpb=math.inf, diverged=True, error=str(exc))
                        log.info("%s diverged: %s", tag, exc)
                if "bpb" not in trial:
                    metrics = json.loads((run / "metrics.json").read_text())
                    bpb = metrics["eval"]["total"].get("bpb", math.nan)
                    trial.update(bpb=bpb if math.isfinite(bpb) else math.inf, diverged=not math.isfinite(bpb),
                                 train_loss=metrics.get("final_train_loss"))
                log.info("%s: held-out bpb %.4f", tag, trial["bpb"])
                trials.append(trial)
    return summarise(trials, widths=widths, lrs=lrs, init_stds=init_stds, mup=mup, model=model, steps=steps,
                     mix_dir=str(mix_dir))


def summarise(trials: list[dict], *, widths: list[int], lrs: list[float], init_stds: list[float], mup: bool,
              **info: object) -> dict:
    """Best (lr, std) per width, its LR grid index, and the grid point closest to best on every width."""
    best = {}
    for w in widths:
        mine = [t for t in trials if t["width"] == w]
        b = min(mine, key=lambda t: (t["bpb"], t["lr"]))
        best[str(w)] = {"lr": b["lr"], "init_std": b["init_std"], "bpb": b["bpb"], "lr_index": lrs.index(b["lr"])}
    excess = {}
    for lr in lrs:
        for std in init_stds:
            ex = [next(t["bpb"] for t in trials if (t["width"], t["lr"], t["init_std"]) == (w, lr, std))
                  - best[str(w)]["bpb"] for w in widths]
            excess[(lr, std)] = sum(ex) / len(ex)
    (lr, std), mean_excess = min(excess.items(), key=lambda kv: (kv[1], kv[0]))
    idx = [best[str(w)]["lr_index"] for w in widths]
    return {"kind": "slimpipe-tune", "parametrisation": "mup" if mup else "sp", "widths": widths, "lrs": lrs,
            "init_stds": init_stds, **info, "trials": trials, "best_per_width": best,
            "best_lr_spread_steps": max(idx) - min(idx),
            "chosen": {"lr": lr, "init_std": std, "mean_excess_bpb": mean_excess}}


def write_outputs(result: dict, out: str | Path, model: str) -> Path:
    """``tune.json``, ``report.md`` and (muP) the ``mup.yaml`` preset with the chosen values."""
    from slimpipe import storage

    out = Path(out)
    safe = json.loads(json.dumps(result, default=str).replace("Infinity", "null"))
    storage.write_bytes_atomic(out / "tune.json", (json.dumps(safe, indent=2) + "\n").encode())
    storage.write_bytes_atomic(out / "report.md", ("\n".join(render_report(result)) + "\n").encode())
    preset_path = out / "mup.yaml"
    if result["parametrisation"] == "mup":
        from slimpipe.train.presets import load_preset

        p = load_preset(model)
        data = {"name": f"{p.name}-mup-tuned",
                "model": {k: v for k, v in dataclasses.asdict(p.model).items() if k != "attention"},
                "train": {k: v for k, v in p.train.items() if k != "lr"}}
        data["model"].update(mup=True, mup_base_lr=result["chosen"]["lr"], mup_base_init_std=result["chosen"]["init_std"])
        header = (f"# muP values tuned by `slimpipe tune` on {result.get('mix_dir')} with proxies of widths "
                  f"{result['widths']} ({result.get('steps')} steps each).\n# Under muP they hold at any width: "
                  "change d_model / n_head / d_ff / n_layer freely, or copy the mup_* lines into another preset.\n")
        _write_yaml(preset_path, data, header)
    return preset_path


def render_report(result: dict) -> list[str]:
    lines = [f"# slimpipe tune ({result['parametrisation']})", "",
             f"Held-out bits per byte after {result.get('steps')} steps; **bold**: best per width.", ""]
    for std in result["init_stds"]:
        lines += [f"init std {std:g}", "", "| width | " + " | ".join(f"lr {lr:g}" for lr in result["lrs"]) + " |",
                  "|---:|" + "---:|" * len(result["lrs"])]
        for w in result["widths"]:
            b = result["best_per_width"][str(w)]
            cells = []
            for lr in result["lrs"]:
                t = next(t for t in result["trials"] if (t["width"], t["lr"], t["init_std"]) == (w, lr, std))
                cell = "diverged" if t.get("diverged") else f"{t['bpb']:.4f}"
                cells.append(f"**{cell}**" if (b["lr"], b["init_std"]) == (lr, std) else cell)
            lines.append(f"| {w} | " + " | ".join(cells) + " |")
        lines.append("")
    c = result["chosen"]
    lines.append(f"Best LR moves {result['best_lr_spread_steps']} grid step(s) across widths. Chosen: lr {c['lr']:g}, "
                 f"init std {c['init_std']:g} (mean excess over each width's best: {c['mean_excess_bpb']:.4f} bpb).")
    return lines


@click.command(name="tune")
@click.argument("mix_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--widths", default="64,128,256", show_default=True, help="Proxy widths (d_model), comma-separated.")
@click.option("--lrs", default="1e-3,3e-3,1e-2,3e-2", show_default=True, help="(Base) learning rates to try.")
@click.option("--init-stds", help="Base init stds to try (default: the preset's muP base std, or its init_std).")
@click.option("--model", default="tiny", show_default=True, help="Preset (or YAML) the proxies take depth, head "
                                                                  "size and training settings from.")
@click.option("--steps", type=int, default=100, show_default=True, help="Optimizer steps per proxy.")
@click.option("--seq-len", type=int, help="Proxy context length (default: the preset's).")
@click.option("--batch-size", type=int, help="Proxy global batch in sequences (default: the preset's).")
@click.option("--sp", is_flag=True, help="Sweep the standard parametrisation instead (for comparison).")
@click.option("--seed", type=int, default=1337, show_default=True, help="Seed of every proxy run.")
@click.option("--threads", type=int, help="torch CPU threads per proxy run.")
@click.option("--device", help="cpu, cuda, ... (default: cuda if available).")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--force", is_flag=True, help="Write into a non-empty OUT that is not a slimpipe output (refused if a "
              "file there would be overwritten; nothing there is ever deleted).")
def tune_command(mix_dir: str, widths: str, lrs: str, init_stds: str | None, model: str, steps: int,
                 seq_len: int | None, batch_size: int | None, sp: bool, seed: int, threads: int | None,
                 device: str | None, output: str, force: bool = False) -> None:
    """Sweep learning rate (and init std) on muP proxies of several widths; write the best as a preset."""
    from slimpipe.mix.packed import open_mix

    try:
        if not open_mix(mix_dir)[1]:
            raise ValueError(f"{mix_dir}: no held-out sets (eval/<source>/) to score the proxies on")
        w = [int(x) for x in parse_floats(widths, "--widths")]
        grid = parse_floats(lrs, "--lrs")
        from slimpipe.train.presets import load_preset

        p = load_preset(model)
        stds = parse_floats(init_stds, "--init-stds") if init_stds else [
            p.model.init_std if sp else p.model.mup_base_init_std]
        for width in w:
            proxy_preset(model, width, mup=not sp, init_std=stds[0])
        from slimpipe.outdir import claim, identity, input_identity

        # OUT: new, empty or this same sweep's (its finished proxies are kept); anything else refused in one line
        claim(output, "tune", identity(inputs=input_identity([mix_dir]), widths=w, lrs=grid, init_stds=stds, model=model,
                                       steps=steps, seq_len=seq_len, batch_size=batch_size, sp=sp, seed=seed),
              sources=[mix_dir], force=force)
        result = sweep(mix_dir, output, widths=w, lrs=grid, init_stds=stds, model=model, steps=steps, mup=not sp,
                       seed=seed, seq_len=seq_len, batch_size=batch_size, threads=threads, device=device)
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    preset = write_outputs(result, output, model)
    click.echo("\n".join(render_report(result)))
    if not sp:
        click.echo(f"wrote {preset} (train any width with --model {preset})")
