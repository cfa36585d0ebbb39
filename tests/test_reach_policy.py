"""The reach task and the trained VLA-style policy, in closed loop through the runtime."""

import pytest

from edgevla.runtime.robots.sim_reach import SimReach, expert_action


def test_scripted_expert_solves_the_task():
    robot = SimReach()
    successes = 0
    try:
        for episode in range(20):
            robot.reset(500 + episode)
            while not robot.done():
                robot.act(expert_action(robot.ee_position(), robot.target_position()))
            successes += robot.succeeded()
    finally:
        robot.close()
    assert successes == 20


def test_observation_matches_its_spec_and_image_shows_the_balls():
    robot = SimReach()
    try:
        robot.reset(3, target="yellow")
        obs = robot.observe()
        for name, spec in robot.observation_spec.items():
            spec.check(name, obs[name])
        image = obs["image"].astype(int)
        red = (image[..., 0] > 200) & (image[..., 1] < 80)
        yellow = (image[..., 0] > 200) & (image[..., 1] > 200) & (image[..., 2] < 80)
        assert red.sum() > 3 and yellow.sum() > 3
        assert robot.instruction == "reach the yellow ball"
        with pytest.raises(ValueError, match="expected shape"):
            robot.observation_spec["image"].check("image", obs["image"][:32])
    finally:
        robot.close()


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    from edgevla.models.train_reach import load_or_train

    with pytest.raises(FileNotFoundError, match="no trained reach policy at .*edgevla demo"):
        load_or_train(cache_dir=tmp_path, allow_training=False)


@pytest.mark.slow
def test_trained_policy_reaches_95_percent_in_closed_loop(tmp_path):
    """Behaviour cloning (cached checkpoint, trained here when absent) -> ONNX -> runtime loop."""
    import torch

    from edgevla.exporters.onnx_export import export
    from edgevla.models.train_reach import HELD_OUT_SEED_OFFSET, load_or_train
    from edgevla.runtime.engine import OnnxRuntimePolicy
    from edgevla.runtime.loop import ControlLoop

    torch.set_num_threads(2)
    model = load_or_train(progress=False)
    robot = SimReach()
    obs = robot.reset(0) and robot.observe()
    example = tuple(torch.from_numpy(obs[k])[None] for k in ("image", "instruction", "state"))
    export(model, example, tmp_path / "reach.onnx", input_names=["image", "instruction", "state"],
           output_names=["actions"])
    loop = ControlLoop(robot, OnnxRuntimePolicy(tmp_path / "reach.onnx", vocabulary_size=6))
    episodes = 100
    try:
        results = [loop.run_episode(HELD_OUT_SEED_OFFSET + 10_000 + e) for e in range(episodes)]
    finally:
        robot.close()
    success = sum(r.success for r in results) / episodes
    assert success >= 0.95, f"closed-loop success {success:.2%} on {episodes} held-out episodes"
    assert loop.events.total() == 0
