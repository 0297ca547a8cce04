"""Phase-1 learning step: the engine against a plain textual-inversion step, on CPU.

    .venv/bin/python bench/learn_step.py [--steps 20] [--rounds 5] [--profile]

The engine is timed through `learn()` itself (phase 2 off, no diagnostics): its progress
callback stamps the end of every step. The baseline is the step of diffusers'
`examples/textual_inversion/textual_inversion.py` written out: tokenize the prompt, draw a
latent, add noise, text encoder + UNet, MSE, backward, AdamW on the embedding table, scheduler
step, restore every other row; batch 1, the same UNet weights (a copy with diffusers' stock
attention processors, as the engine installs its own on the original), a copy of the same text
encoder with the same two added tokens, the same image and masks. Its latent is drawn from the
VAE posterior cached once per flip state, as the engine does, so the ratio isolates the
engine's own work; a second baseline encodes with the VAE every step, as diffusers' script
does. Its loss is the engine's masked MSE (reconstruction term only).

Machines shared with other jobs make wall times scatter, so the callback runs one step of each
baseline right after each engine step (outside the engine step's time): every engine step is
compared with baseline steps run beside it. The first `--warmup` steps of each run are dropped;
figures are medians, by wall clock and by process CPU time.
"""

from __future__ import annotations

import argparse
import copy
import gc
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.optimization import get_scheduler

import mifo_engine as me

if __package__ in (None, ""):  # run as `python bench/learn_step.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine, median, scene, set_threads, spread, table, write_json
from mifo_engine.inputs import prepare_inputs

TARGET_OVERHEAD = 0.25
TOKENS = ("<asset0>", "<asset1>")
CACHED = "plain TI: cached posterior"
ENCODED = "plain TI: VAE encode each step"
ENGINE: dict[str, dict[str, Any]] = {
    "engine: attention loss every step (t_attn=1000)": {"t_attn": 1000},
    "engine: default t_attn=500 (mixed)": {},
    "engine: attn_loss=none": {"attn_loss": "none"},
}


def engine_config(args: argparse.Namespace, **changes: Any) -> me.LearnConfig:
    n = args.warmup + args.steps
    return me.LearnConfig(
        phase1_steps=n,
        reward_steps=args.warmup + args.steps // 2,  # measured steps: half reward, half penalty
        phase2=False,
        diagnostic_timesteps=(),
        seed=args.seed,
        **changes,
    )


class Paired:
    """Progress callback: times the engine step that just ended, then one step of each baseline.

    The time spent in the callback is left out of the next engine step, so each engine step
    runs next to its baseline steps, under the same load from whatever else shares the machine.
    """

    def __init__(self, baselines: dict[str, PlainTextualInversion]):
        self.baselines = baselines
        self.engine: dict[str, list] = {"wall": [], "cpu": [], "kinds": []}
        self.plain: dict[str, dict[str, list[float]]] = {
            name: {"wall": [], "cpu": []} for name in baselines
        }
        self._left: tuple[float, float] | None = None

    def __call__(self, p: Any) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        if p.phase != "phase1":
            return
        if self._left is not None and p.step > 0:
            self.engine["wall"].append(wall - self._left[0])
            self.engine["cpu"].append(cpu - self._left[1])
            self.engine["kinds"].append(_kind(tuple(p.losses)))  # names only, no values read
        if p.step < p.total:
            for name, plain in self.baselines.items():
                w, c = time.perf_counter(), time.process_time()
                plain.step()
                self.plain[name]["wall"].append(time.perf_counter() - w)
                self.plain[name]["cpu"].append(time.process_time() - c)
        self._left = time.perf_counter(), time.process_time()


def _kind(terms: tuple[str, ...]) -> str:
    return "reward" if "reward" in terms else "penalty" if "penalty" in terms else "rec_only"


class PlainTextualInversion:
    """The diffusers textual-inversion training step, on the engine's model and inputs."""

    def __init__(
        self, base: Any, unet: Any, image: Any, masks: Any, cfg: me.LearnConfig, encode: bool
    ):
        self.base, self.unet, self.cfg, self.encode_each_step = base, unet, cfg, encode
        self.tokenizer = copy.deepcopy(base.tokenizer)
        self.tokenizer.add_tokens(list(TOKENS))
        self.ids = self.tokenizer.convert_tokens_to_ids(list(TOKENS))
        self.text_encoder = copy.deepcopy(base.text_encoder)
        self.text_encoder.resize_token_embeddings(len(self.tokenizer), mean_resizing=False)
        table = self.text_encoder.get_input_embeddings().weight
        gen = torch.Generator().manual_seed(cfg.seed)
        with torch.no_grad():
            old = table[: self.ids[0]]
            for i in self.ids:
                table[i] = old.mean(0) + old.std(0) * torch.randn(table.shape[1], generator=gen)
        self.text_encoder.requires_grad_(False)
        table.requires_grad_(True)
        self.text_encoder.train()
        self.orig = table.detach().clone()
        self.keep = torch.ones(table.shape[0], dtype=torch.bool)
        self.keep[self.ids] = False
        self.optimizer = torch.optim.AdamW(
            self.text_encoder.get_input_embeddings().parameters(),
            lr=cfg.lr,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            weight_decay=cfg.weight_decay,
        )
        self.lr_scheduler = get_scheduler("constant", self.optimizer)
        self.noise_scheduler = DDPMScheduler.from_config(base.scheduler_config)
        inputs = prepare_inputs(image, masks, resolution=base.resolution, config=cfg)
        self.pixels = torch.stack([inputs.image, inputs.image.flip(-1)])  # flip states
        latent = base.resolution // base.vae_scale_factor
        both = torch.stack([inputs.masks, inputs.masks.flip(-1)])
        self.masks = F.interpolate(both, size=(latent, latent), mode="bilinear", antialias=True)
        with torch.no_grad():
            dist = base.vae.encode(self.pixels).latent_dist
        self.mean, self.std = dist.mean, dist.std
        self.scaling = base.vae.config.scaling_factor
        self.gen = torch.Generator().manual_seed(cfg.seed)

    def steps(self, n: int) -> None:
        for _ in range(n):
            self.step()

    def step(self) -> None:
        g = self.gen
        k = int(torch.randint(1, len(TOKENS) + 1, (1,), generator=g))
        subset = torch.randperm(len(TOKENS), generator=g)[:k].tolist()
        flip = int(torch.rand((), generator=g) < 0.5)
        text = "a photo of " + " and ".join(TOKENS[i] for i in subset)
        ids = self.tokenizer(
            text,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        with torch.no_grad():
            if self.encode_each_step:
                z0 = self.base.vae.encode(self.pixels[flip : flip + 1]).latent_dist.sample(g)
            else:
                eps = torch.randn(self.mean.shape[1:], generator=g)
                z0 = (self.mean[flip] + self.std[flip] * eps)[None]
            z0 = z0 * self.scaling
        noise = torch.randn(z0.shape, generator=g)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (1,), generator=g)
        zt = self.noise_scheduler.add_noise(z0, noise, t)
        cond = self.text_encoder(ids)[0]
        pred = self.unet(zt, t, encoder_hidden_states=cond).sample
        mask = self.masks[flip, subset].amax(0)
        loss = ((mask * (noise.float() - pred.float())) ** 2).mean()
        loss.backward()
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad()
        with torch.no_grad():
            table = self.text_encoder.get_input_embeddings().weight
            table[self.keep] = self.orig[self.keep]


def profile(base: Any, baseline: PlainTextualInversion, image: Any, masks: Any, args: Any) -> None:
    """Where a step's time goes: torch.profiler over the engine (attention on) and the baseline."""
    from torch.profiler import profile as torch_profile

    n = args.warmup + args.steps
    cases: dict[str, Callable[[], Any]] = {
        "engine, attention loss on every step": lambda: me.learn(
            base, image, masks, config=engine_config(args, t_attn=1000)
        ),
        CACHED: lambda: baseline.steps(n),
    }
    for label, fn in cases.items():
        fn()  # warm
        with torch_profile() as prof:
            fn()
        print(f"\n== profile: {label} ({n} steps)")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="measured steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="steps dropped at the start of a run")
    parser.add_argument("--rounds", type=int, default=5, help="runs of each engine variant")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="also print torch.profiler tables")
    parser.add_argument(
        "--out", default=None, help="JSON path (default bench/results/learn_step.json)"
    )
    args = parser.parse_args(argv)
    threads = set_threads(args.threads)
    torch.manual_seed(args.seed)
    started = time.perf_counter()

    base = me.load_base_model("tiny", device="cpu")
    image, masks = scene()
    # Same weights, stock attention processors: the engine installs its own on base.unet.
    unet = copy.deepcopy(base.unet)
    cfg = engine_config(args)
    baselines = {
        CACHED: PlainTextualInversion(base, unet, image, masks, cfg, encode=False),
        ENCODED: PlainTextualInversion(base, unet, image, masks, cfg, encode=True),
    }
    names = list(ENGINE)
    runs: dict[str, list[Paired]] = {k: [] for k in names}
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            gc.collect()  # a collection left over from the last run would land in this one
            probe = Paired(baselines)
            config = engine_config(args, **ENGINE[name])
            me.learn(base, image, masks, names=["left", "right"], config=config, progress=probe)
            runs[name].append(probe)

    w = args.warmup

    def engine(name: str, key: str) -> list:
        return [v for probe in runs[name] for v in probe.engine[key][w:]]

    def plain(name: str, baseline: str, clock: str) -> list[float]:
        return [v for probe in runs[name] for v in probe.plain[baseline][clock][w:]]

    rows: list[dict[str, Any]] = []
    for name in names:
        e_wall, e_cpu = engine(name, "wall"), engine(name, "cpu")
        p_wall, p_cpu = plain(name, CACHED, "wall"), plain(name, CACHED, "cpu")
        rows.append(
            {
                "variant": name,
                "step_wall_s": spread(e_wall),
                "step_cpu_s": spread(e_cpu),
                "steps_per_s": 1.0 / median(e_wall),
                "paired_plain_step_wall_s": spread(p_wall),
                "paired_plain_step_cpu_s": spread(p_cpu),
                "ratio_vs_plain_wall": median(e_wall) / median(p_wall),
                "ratio_vs_plain_cpu": median(e_cpu) / median(p_cpu),
            }
        )
    all_cached = {c: [v for n in names for v in plain(n, CACHED, c)] for c in ("wall", "cpu")}
    for baseline in (CACHED, ENCODED):
        b_wall = [v for n in names for v in plain(n, baseline, "wall")]
        b_cpu = [v for n in names for v in plain(n, baseline, "cpu")]
        rows.append(
            {
                "variant": baseline,
                "step_wall_s": spread(b_wall),
                "step_cpu_s": spread(b_cpu),
                "steps_per_s": 1.0 / median(b_wall),
                "ratio_vs_plain_wall": median(b_wall) / median(all_cached["wall"]),
                "ratio_vs_plain_cpu": median(b_cpu) / median(all_cached["cpu"]),
            }
        )
    with_attention = names[:2]
    kinds = {
        kind: {
            clock: spread(
                [
                    t
                    for n in with_attention
                    for t, k in zip(engine(n, clock), engine(n, "kinds"), strict=True)
                    if k == kind
                ]
            )
            for clock in ("wall", "cpu")
        }
        for kind in ("reward", "penalty", "rec_only")
    }
    paired = {
        c: median([v for n in with_attention for v in plain(n, CACHED, c)]) for c in ("wall", "cpu")
    }
    overhead = {
        key: {
            "wall": rows[i]["ratio_vs_plain_wall"] - 1.0,
            "cpu": rows[i]["ratio_vs_plain_cpu"] - 1.0,
        }
        for i, key in enumerate(("attention_every_step", "default_t_attn_500"))
    }
    result = {
        "benchmark": "learn_step",
        "model": "tiny",
        "device": "cpu",
        "baseline_latents": "VAE posterior cached once per flip state (as the engine); "
        "the second baseline encodes with the VAE every step (as diffusers' script)",
        "settings": vars(args) | {"threads": threads},
        "machine": machine(),
        "wall_s": time.perf_counter() - started,
        "variants": rows,
        "engine_step_by_kind": kinds,
        "target_overhead": TARGET_OVERHEAD,
        "overhead": overhead,
        "target_met": {
            k: {clock: v <= TARGET_OVERHEAD for clock, v in o.items()} for k, o in overhead.items()
        },
    }
    path = write_json("learn_step", result, args.out)

    print(
        f"Phase-1 learning step, tiny model, CPU, {threads} torch thread(s), batch 1; "
        f"{args.rounds} runs of each engine variant x {args.steps} steps "
        f"(+{w} warm-up steps dropped per run), each step followed by one step of each baseline"
    )
    print(
        table(
            ["variant", "wall ms/step", "p25-p75", "steps/s", "x plain", "cpu ms/step", "x plain"],
            [
                [
                    r["variant"],
                    1e3 * r["step_wall_s"]["median"],
                    f"{1e3 * r['step_wall_s']['p25']:.0f}-{1e3 * r['step_wall_s']['p75']:.0f}",
                    r["steps_per_s"],
                    r["ratio_vs_plain_wall"],
                    1e3 * r["step_cpu_s"]["median"],
                    r["ratio_vs_plain_cpu"],
                ]
                for r in rows
            ],
        )
    )
    print(
        f"('x plain': engine rows against the '{CACHED}' steps run beside them; baseline rows "
        "against all of its steps)"
    )
    print("\nEngine steps by what they computed (the two engine variants with an attention loss):")
    print(
        table(
            ["step", "n", "wall ms", "x plain", "cpu ms", "x plain"],
            [
                [
                    k,
                    v["wall"]["n"],
                    1e3 * v["wall"]["median"],
                    v["wall"]["median"] / paired["wall"],
                    1e3 * v["cpu"]["median"],
                    v["cpu"]["median"] / paired["cpu"],
                ]
                for k, v in kinds.items()
            ],
        )
    )
    print(f"\nTarget: engine step overhead <= {TARGET_OVERHEAD:.0%} over '{CACHED}' (medians)")
    for k, o in overhead.items():
        verdicts = ", ".join(
            f"{clock} {v:+.1%} ({'met' if v <= TARGET_OVERHEAD else 'MISSED'})"
            for clock, v in o.items()
        )
        print(f"  {k}: {verdicts}")
    print("  (cpu = process CPU time: steadier than wall time when other jobs share the cores)")
    print(f"\nJSON: {path}")
    if args.profile:
        profile(base, baselines[CACHED], image, masks, args)
    return result


if __name__ == "__main__":
    main()
