"""Behaviour cloning of the reach policy from the scripted expert, with a checkpoint cache.

Demonstrations are collected with noise injection (the executed action is the expert's plus noise, the
label is the clean expert chunk from the state actually reached) so that the policy sees and learns to
recover from the states its own small errors lead to. Training runs on the CPU with one or two threads;
the checkpoint is keyed by a hash of everything that determines it, so later runs load it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, asdict
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from edgevla.runtime.robots.sim_reach import SimReach, ReachConfig, expert_chunk
from .reach_vla import ReachVLA, ReachVLAConfig

HELD_OUT_SEED_OFFSET = 1_000_000  # evaluation episodes use seeds from here; training seeds stay below
# Bump when anything that changes the trained weights changes (data collection, loss, architecture code):
# cached checkpoints are keyed by this and the three config dataclasses.
RECIPE_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """How the reach policy is trained."""

    episodes: int = 600  # demonstration episodes
    noise_std: float = 0.08  # std of the noise added to executed expert actions, m/s
    extra_steps: int = 4  # steps recorded after the expert reaches the ball (teaches stopping)
    epochs: int = 15  # passes over the demonstrations
    batch_size: int = 128  # samples per optimiser step
    learning_rate: float = 1e-3  # peak AdamW learning rate (cosine decay to 0)
    weight_decay: float = 1e-4  # AdamW weight decay
    threads: int = 2  # torch CPU threads
    seed: int = 0  # seeds data collection, initialisation and shuffling


def default_cache_dir() -> Path:
    return Path(os.environ.get("EDGEVLA_CACHE", Path.home() / ".cache" / "edgevla"))


def checkpoint_key(model_config: ReachVLAConfig, train_config: TrainConfig, task: ReachConfig) -> str:
    blob = json.dumps([RECIPE_VERSION, asdict(model_config), asdict(train_config), asdict(task)], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def collect_demonstrations(train: TrainConfig, model: ReachVLAConfig, task: ReachConfig,
                           progress: bool = True) -> dict[str, np.ndarray]:
    """Roll out the noisy expert; returns image/instruction/state/chunk arrays, one row per step."""
    from tqdm import tqdm

    rng = np.random.default_rng(train.seed)
    robot = SimReach(task)
    rows: dict[str, list] = {"image": [], "instruction": [], "state": [], "chunk": []}
    dt = 1.0 / task.control_hz
    try:
        for episode in tqdm(range(train.episodes), desc="demonstrations", disable=not progress):
            robot.reset(train.seed * 100_000 + episode)
            # Some episodes are driven far off the expert's path, most only a little.
            noise = train.noise_std * (3.0 if episode % 4 == 0 else 1.0)
            after_success = 0
            while robot.steps < task.max_steps and after_success <= train.extra_steps:
                obs = robot.observe()
                chunk = expert_chunk(robot.ee_position(), robot.target_position(), horizon=model.chunk, dt=dt,
                                     max_speed=task.max_ee_speed)
                for key in ("image", "instruction", "state"):
                    rows[key].append(obs[key])
                rows["chunk"].append(chunk)
                robot.act(chunk[0] + rng.normal(0.0, noise, size=2).astype(np.float32))
                after_success += robot.succeeded()
    finally:
        robot.close()
    return {key: np.stack(value) for key, value in rows.items()}


def train_policy(data: dict[str, np.ndarray], model_config: ReachVLAConfig, train: TrainConfig,
                 progress: bool = True) -> ReachVLA:
    from tqdm import tqdm

    torch.manual_seed(train.seed)
    torch.set_num_threads(train.threads)
    model = ReachVLA(model_config)
    tensors = {key: torch.from_numpy(value) for key, value in data.items()}
    n = len(tensors["state"])
    steps_per_epoch = (n + train.batch_size - 1) // train.batch_size
    total_steps = train.epochs * steps_per_epoch
    optimiser = torch.optim.AdamW(model.parameters(), lr=train.learning_rate, weight_decay=train.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=train.learning_rate, total_steps=total_steps,
                                                   pct_start=0.05)
    generator = torch.Generator().manual_seed(train.seed)
    bar = tqdm(total=total_steps, desc="training", disable=not progress)
    model.train()
    for _ in range(train.epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, train.batch_size):
            index = order[start:start + train.batch_size]
            pred = model(tensors["image"][index], tensors["instruction"][index], tensors["state"][index])
            loss = F.mse_loss(pred / model_config.max_speed, tensors["chunk"][index] / model_config.max_speed)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    bar.close()
    model.eval()
    return model


def evaluate_torch(model: ReachVLA, episodes: int, task: ReachConfig | None = None,
                   seed_offset: int = HELD_OUT_SEED_OFFSET, progress: bool = True) -> dict[str, float]:
    """Closed-loop success of a torch policy on held-out episodes (executes the first action of each chunk)."""
    from tqdm import tqdm

    robot = SimReach(task or ReachConfig())
    successes, distances = 0, []
    try:
        with torch.inference_mode():
            for episode in tqdm(range(episodes), desc="evaluate", disable=not progress):
                robot.reset(seed_offset + episode)
                while not robot.done():
                    obs = robot.observe()
                    chunk = model(*(torch.from_numpy(obs[k])[None] for k in ("image", "instruction", "state")))
                    robot.act(chunk[0, 0].numpy())
                successes += robot.succeeded()
                distances.append(robot.distance_to_target())
    finally:
        robot.close()
    return {"success_rate": successes / episodes, "median_final_distance_m": float(np.median(distances))}


def load_or_train(*, cache_dir: Path | None = None, model_config: ReachVLAConfig | None = None,
                  train: TrainConfig | None = None, task: ReachConfig | None = None,
                  progress: bool = True, allow_training: bool = True) -> ReachVLA:
    """Load the cached checkpoint for these settings, or train it (and cache it) if allowed."""
    model_config = model_config or ReachVLAConfig()
    train = train or TrainConfig()
    task = task or ReachConfig()
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    path = cache_dir / f"reach_vla-{checkpoint_key(model_config, train, task)}.pt"
    if path.exists():
        model = ReachVLA(model_config)
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        model.eval()
        return model
    if not allow_training:
        raise FileNotFoundError(
            f"no trained reach policy at {path}; run `edgevla demo` (it trains and caches one in under 10 "
            "minutes) or set EDGEVLA_CACHE to the folder that holds it")
    started = time.perf_counter()
    data = collect_demonstrations(train, model_config, task, progress=progress)
    model = train_policy(data, model_config, train, progress=progress)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    info = {"samples": int(len(data["state"])), "seconds": round(time.perf_counter() - started, 1),
            "model": asdict(model_config), "train": asdict(train)}
    path.with_suffix(".json").write_text(json.dumps(info, indent=2))
    return model
