"""#20.8: under FSDP2 each rank shards the model on the meta device first and then materialises only its
shards (torchtitan's order), so no rank ever holds a full parameter. Two CPU ranks over gloo
(torch.multiprocessing): every tensor allocated while the trainer builds its model is recorded (a
TorchDispatchMode watching the storages it returns), then the ranks train, checkpoint and resume."""

from __future__ import annotations

import json
import shutil
import socket
import weakref
from pathlib import Path

import pytest
import torch

from slimpipe.train.plan import TrainConfig
from tests.test_train_loop import gloo_world_of_one  # noqa: F401  (the fixture)

MICRO_YAML = """\
name: micro
model: {n_layer: 2, d_model: 64, n_head: 4, d_ff: 170, max_seq_len: 32}
train: {seq_len: 32, batch_size: 8, micro_batch: 2, lr: 3.0e-3, warmup_fraction: 0.25}
"""


class Allocations(torch.utils._python_dispatch.TorchDispatchMode):
    """Every storage an op returns on this thread (a DTensor: its local shard's): the largest one, and
    the peak of those alive at once."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[weakref.ref, int]] = {}
        self.peak = self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from torch.distributed.tensor import DTensor
        from torch.utils._pytree import tree_leaves

        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            local = t.to_local() if isinstance(t, DTensor) else t
            if local.device.type == "meta":
                continue
            st = local.untyped_storage()
            key = st.data_ptr()
            if key and (key not in self.live or self.live[key][0]() is None):
                self.live[key] = (weakref.ref(st), st.nbytes())
                self.largest = max(self.largest, st.nbytes())
        self.live = {k: v for k, v in self.live.items() if v[0]() is not None}
        self.peak = max(self.peak, sum(n for _, n in self.live.values()))
        return out


def _rank(rank: int, world: int, port: int, root: str) -> None:
    import dataclasses

    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    from slimpipe.train.loop import Trainer

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        base = Path(root)
        cfg = TrainConfig(mix_dir=str(base / "mix"), out_dir=str(base / "full"), model=str(base / "micro.yaml"),
                          max_steps=4, eval_interval=0, checkpoint_interval=2, keep_checkpoints=5,
                          eval_sequences=4, export=False, device="cpu", parallel="fsdp", prefetch=0)
        trainer = Trainer(cfg)
        with Allocations() as alloc:
            trainer.setup()
        params = {n: {"shape": list(p.shape), "dtensor": isinstance(p, DTensor),
                      "local": (p.to_local() if isinstance(p, DTensor) else p).numel()}
                  for n, p in trainer.model.named_parameters()}
        trainer.run_model.train()
        while trainer.step < trainer.plan.total_steps:
            trainer.train_step()
            if trainer.checkpointer.due(trainer.step, trainer.step == trainer.plan.total_steps):
                trainer.save_checkpoint()
        trainer.finish()
        dist.barrier()
        if rank == 0:  # the run cut after step 2, resumed on the same two ranks
            shutil.copytree(base / "full", base / "cut")
            shutil.rmtree(base / "cut" / "checkpoints" / "step_0000004")
            (base / "cut" / "metrics.json").unlink()
        dist.barrier()
        Trainer(dataclasses.replace(cfg, out_dir=str(base / "cut"), resume=True)).run()
        (base / f"rank{rank}.json").write_text(json.dumps(
            {"peak": alloc.peak, "largest": alloc.largest, "params": params}))
    finally:
        dist.destroy_process_group()


@pytest.mark.usefixtures("one_torch_thread")
def test_fsdp2_ranks_materialise_only_their_shards_then_train_and_resume(tmp_path):
    from pydoc_data.topics import topics

    import torch.multiprocessing as mp

    from slimpipe.mix.packed import write_mix
    from slimpipe.mix.tokenizer import train_bpe
    from tests.recipes_fixtures import assert_resumed_run_equals

    docs = [topics[k] for k in sorted(topics)]
    tok = train_bpe(docs, vocab_size=384, out=tmp_path / "bpe")
    write_mix(tmp_path / "mix", docs[:30], {"wikipedia": docs[-3:]}, tok, 32)
    (tmp_path / "micro.yaml").write_text(MICRO_YAML)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    world = 2
    mp.spawn(_rank, args=(world, port, str(tmp_path)), nprocs=world)

    for rank in range(world):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        params = got["params"]
        full = {n: torch.Size(p["shape"]).numel() for n, p in params.items()}
        full_bytes = 4 * sum(full.values())  # fp32 master weights
        # every parameter is a DTensor of which this rank holds its dim-0 share (FSDP2 rounds rows up)
        for n, p in params.items():
            rows = p["shape"][0]
            assert p["dtensor"], n
            assert p["local"] <= -(-rows // world) * (full[n] // rows), (n, p)
        assert sum(p["local"] for p in params.values()) <= full_bytes / 4 / world * 1.05
        # no full parameter was ever allocated: no storage as large as the embedding (the largest), and at
        # most ~1/world of the model alive at once (before: the whole model, then its shards beside it)
        largest = max(full.values())
        assert got["largest"] <= 4 * largest / world * 1.05, (got["largest"], 4 * largest)
        assert got["peak"] <= full_bytes / world * 1.25, (got["peak"], full_bytes)
    # trained and resumed: the run cut after step 2 and resumed equals the uninterrupted one, bit for bit
    log = assert_resumed_run_equals(tmp_path / "full", tmp_path / "cut", "step_0000004")
    assert len(log) == 4 and all(r["loss"] == r["loss"] for r in log)


def test_sharded_init_is_reproducible_from_the_seed_and_keeps_the_distribution(gloo_world_of_one):  # noqa: F811
    """The FSDP2 init (meta -> fully_shard -> to_empty -> init_weights(seed)) gives the same weights for the
    same seed, other weights for another, the same values as :func:`sharded_normal_` on a whole tensor
    (what any shard draws is its rows of that), and the unsharded init's distribution per parameter."""
    from slimpipe.train.model import GPT, ModelConfig, sharded_normal_
    from slimpipe.train.parallelize import apply_fsdp

    cfg = ModelConfig(vocab_size=300, n_layer=2, n_head=4, d_model=64, d_ff=170, max_seq_len=32)

    def build(seed: int) -> dict[str, torch.Tensor]:
        with torch.device("meta"):
            model = GPT(cfg)
        apply_fsdp(model)
        model.to_empty(device="cpu")
        model.init_weights(seed=seed)
        return {n: p.full_tensor().detach() for n, p in model.named_parameters()}

    a, b, c = build(7), build(7), build(8)
    torch.manual_seed(0)
    plain = dict(GPT(cfg).named_parameters())
    for n, w in a.items():
        assert torch.equal(w, b[n]), n
        if w.dim() == 2:
            assert not torch.equal(w, c[n]), n
            rows = w[: cfg.vocab_size] if n == "wte.weight" else w
            ref = plain[n].detach()[: rows.shape[0]]
            assert rows.std().item() == pytest.approx(ref.std().item(), rel=0.1), n
            assert abs(rows.mean().item()) < 3 * ref.std().item() / rows.numel() ** 0.5, n
            std = 0.02 / 2 if n.endswith(("proj.weight", "down.weight")) else 0.02  # output projections / sqrt(2L)
            whole = sharded_normal_(torch.empty(w.shape), std, seed=7, key=n)
            assert torch.equal(whole[: rows.shape[0]], rows), n
        else:  # biases zero, LayerNorm gains one
            assert torch.equal(w, plain[n].detach()), n
    assert (a["wte.weight"][cfg.vocab_size :] == 0).all()  # padding rows
