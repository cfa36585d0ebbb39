"""The reach task in MuJoCo: a 2-link planar arm, a red and a yellow ball, "reach the red/yellow ball".

A 64x64 top-down camera, joint state and the instruction tokens are the observation; the action is the
end-effector velocity in m/s (Cartesian actions are what made this task learnable, see shared field notes),
turned into joint velocity commands with a damped least-squares inverse Jacobian.
Rendering needs no GPU: MUJOCO_GL=egl (Mesa software) is used unless the caller chose a backend.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .base import ArraySpec, Robot
from ..tokenizer import encode_instruction, INSTRUCTION_LENGTH

os.environ.setdefault("MUJOCO_GL", "egl")

COLOURS = ("red", "yellow")

_MJCF = """
<mujoco model="edgevla_reach">
  <compiler angle="radian"/>
  <option timestep="0.002" gravity="0 0 0"/>
  <visual>
    <quality shadowsize="0" offsamples="0"/>
    <global offwidth="64" offheight="64"/>
    <headlight ambient="0.6 0.6 0.6" diffuse="0.4 0.4 0.4" specular="0 0 0"/>
  </visual>
  <worldbody>
    <geom name="floor" type="plane" size="0.4 0.4 0.01" rgba="0.25 0.3 0.35 1" contype="0" conaffinity="0"/>
    <camera name="top" pos="0 0 1" projection="orthographic" fovy="{extent}"/>
    <body name="link1" pos="0 0 0.02">
      <joint name="shoulder" type="hinge" axis="0 0 1" damping="0.05" armature="0.01"/>
      <geom type="capsule" fromto="0 0 0 {l1} 0 0" size="0.012" rgba="0.75 0.75 0.8 1" mass="0.2"
            contype="0" conaffinity="0"/>
      <body name="link2" pos="{l1} 0 0">
        <joint name="elbow" type="hinge" axis="0 0 1" damping="0.05" armature="0.01"/>
        <geom type="capsule" fromto="0 0 0 {l2} 0 0" size="0.01" rgba="0.55 0.6 0.9 1" mass="0.15"
              contype="0" conaffinity="0"/>
        <site name="ee" pos="{l2} 0 0" size="0.012" rgba="0.1 0.9 0.3 1"/>
      </body>
    </body>
    <body name="ball_red" mocap="true" pos="0.1 0.1 0.01">
      <geom type="sphere" size="{ball_r}" rgba="0.95 0.1 0.1 1" contype="0" conaffinity="0"/>
    </body>
    <body name="ball_yellow" mocap="true" pos="-0.1 0.1 0.01">
      <geom type="sphere" size="{ball_r}" rgba="0.95 0.9 0.1 1" contype="0" conaffinity="0"/>
    </body>
  </worldbody>
  <actuator>
    <velocity joint="shoulder" kv="2.0" ctrlrange="-4 4"/>
    <velocity joint="elbow" kv="2.0" ctrlrange="-4 4"/>
  </actuator>
</mujoco>
"""


@dataclass(frozen=True, kw_only=True)
class ReachConfig:
    """Geometry and timing of the reach task."""

    control_hz: float = 20.0  # control rate, Hz: one act() advances the simulation by 1/control_hz s
    link1: float = 0.14  # upper arm length, m
    link2: float = 0.12  # forearm length, m
    ball_radius: float = 0.018  # target ball radius, m
    camera_extent: float = 0.64  # side of the square seen by the 64x64 top camera, m
    image_size: int = 64  # camera resolution, pixels per side
    max_ee_speed: float = 0.25  # end-effector speed limit, m/s (actions are clipped to this norm)
    max_joint_speed: float = 4.0  # joint velocity command limit, rad/s
    success_distance: float = 0.02  # end effector within this of the named ball counts as success, m
    max_steps: int = 80  # control steps before an episode counts as failed

    def __post_init__(self):
        if self.control_hz <= 0 or self.max_steps <= 0:
            raise ValueError(f"control_hz and max_steps must be positive, got {self.control_hz}, {self.max_steps}")
        if self.success_distance <= 0:
            raise ValueError(f"success_distance must be positive (m), got {self.success_distance}")


class SimReach(Robot):
    """The MuJoCo reach task behind the Robot interface, plus episode bookkeeping (reset, success)."""

    name = "sim:reach"

    def __init__(self, config: ReachConfig | None = None):
        self.config = config or ReachConfig()
        self._model = None
        self._data = None
        self._renderer = None
        self.instruction = "reach the red ball"
        self.target_colour = "red"
        self.steps = 0

    # -- Robot interface -------------------------------------------------------------------------------
    @property
    def observation_spec(self) -> dict[str, ArraySpec]:
        s = self.config.image_size
        return {
            "image": ArraySpec(shape=(s, s, 3), dtype="uint8"),
            "state": ArraySpec(shape=(8,), dtype="float32"),
            "instruction": ArraySpec(shape=(INSTRUCTION_LENGTH,), dtype="int64"),
        }

    @property
    def action_spec(self) -> ArraySpec:
        return ArraySpec(shape=(2,), dtype="float32")

    def connect(self) -> None:
        if self._model is not None:
            return
        import mujoco

        c = self.config
        xml = _MJCF.format(l1=c.link1, l2=c.link2, ball_r=c.ball_radius, extent=c.camera_extent)
        self._model = mujoco.MjModel.from_xml_string(xml)
        self._data = mujoco.MjData(self._model)
        self._renderer = mujoco.Renderer(self._model, c.image_size, c.image_size)
        self._substeps = max(1, int(round(1.0 / (c.control_hz * self._model.opt.timestep))))
        self._ee_site = self._model.site("ee").id
        self._mocap = {colour: self._model.body(f"ball_{colour}").mocapid[0] for colour in COLOURS}

    def observe(self) -> dict[str, np.ndarray]:
        import mujoco

        self._renderer.update_scene(self._data, camera="top")
        image = self._renderer.render()
        q = self._data.qpos[:2]
        dq = self._data.qvel[:2]
        ee = self.ee_position()
        state = np.array([np.sin(q[0]), np.cos(q[0]), np.sin(q[1]), np.cos(q[1]), dq[0], dq[1], ee[0], ee[1]],
                         dtype=np.float32)
        del mujoco
        return {"image": np.ascontiguousarray(image, dtype=np.uint8), "state": state,
                "instruction": encode_instruction(self.instruction)}

    def act(self, action: np.ndarray) -> None:
        import mujoco

        v = self.clip_action(np.asarray(action, dtype=np.float64).reshape(2))
        jac = self._jacobian()
        damping = 1e-3
        qdot = jac.T @ np.linalg.solve(jac @ jac.T + damping * np.eye(2), v)
        lim = self.config.max_joint_speed
        self._data.ctrl[:2] = np.clip(qdot, -lim, lim)
        for _ in range(self._substeps):
            mujoco.mj_step(self._model, self._data)
        self.steps += 1

    def safe_action(self) -> np.ndarray:
        return np.zeros(2, dtype=np.float32)

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
        self._renderer = None
        self._model = None
        self._data = None

    # -- episodes --------------------------------------------------------------------------------------
    def reset(self, seed: int, *, target: str | None = None) -> str:
        """Place the arm and both balls from `seed`; returns the instruction for this episode."""
        import mujoco

        self.connect()
        rng = np.random.default_rng(seed)
        c = self.config
        mujoco.mj_resetData(self._model, self._data)
        q2 = rng.uniform(0.4, 2.6) * rng.choice([-1.0, 1.0])
        self._data.qpos[:2] = [rng.uniform(-np.pi, np.pi), q2]
        reach_min, reach_max = abs(c.link1 - c.link2) + 0.07, c.link1 + c.link2 - 0.03
        while True:
            radii = rng.uniform(reach_min, reach_max, size=2)
            angles = rng.uniform(-np.pi, np.pi, size=2)
            balls = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
            if np.linalg.norm(balls[0] - balls[1]) > 0.08:
                break
        for colour, xy in zip(COLOURS, balls):
            self._data.mocap_pos[self._mocap[colour]] = [xy[0], xy[1], 0.01]
        mujoco.mj_forward(self._model, self._data)
        self.target_colour = target if target is not None else str(rng.choice(COLOURS))
        if self.target_colour not in COLOURS:
            raise ValueError(f"target must be one of {COLOURS}, got {self.target_colour!r}")
        self.instruction = f"reach the {self.target_colour} ball"
        self.steps = 0
        return self.instruction

    def ee_position(self) -> np.ndarray:
        return self._data.site_xpos[self._ee_site][:2].copy()

    def target_position(self) -> np.ndarray:
        return self._data.mocap_pos[self._mocap[self.target_colour]][:2].copy()

    def distance_to_target(self) -> float:
        return float(np.linalg.norm(self.ee_position() - self.target_position()))

    def succeeded(self) -> bool:
        return self.distance_to_target() < self.config.success_distance

    def done(self) -> bool:
        return self.succeeded() or self.steps >= self.config.max_steps

    def clip_action(self, v: np.ndarray) -> np.ndarray:
        speed = float(np.linalg.norm(v))
        if not np.isfinite(speed):
            return np.zeros(2)
        if speed > self.config.max_ee_speed:
            v = v * (self.config.max_ee_speed / speed)
        return v

    def _jacobian(self) -> np.ndarray:
        import mujoco

        jacp = np.zeros((3, self._model.nv))
        mujoco.mj_jacSite(self._model, self._data, jacp, None, self._ee_site)
        return jacp[:2, :2]


def expert_action(ee: np.ndarray, target: np.ndarray, *, gain: float = 4.0, max_speed: float = 0.25) -> np.ndarray:
    """The scripted expert: proportional end-effector velocity toward the target, norm-limited (m/s)."""
    v = gain * (np.asarray(target, dtype=np.float64) - np.asarray(ee, dtype=np.float64))
    speed = float(np.linalg.norm(v))
    if speed > max_speed:
        v *= max_speed / speed
    return v.astype(np.float32)


def expert_chunk(ee: np.ndarray, target: np.ndarray, *, horizon: int, dt: float, gain: float = 4.0,
                 max_speed: float = 0.25) -> np.ndarray:
    """The expert's next `horizon` actions, rolled forward on the ideal kinematics p += v dt."""
    p = np.asarray(ee, dtype=np.float64).copy()
    chunk = np.zeros((horizon, 2), dtype=np.float32)
    for i in range(horizon):
        chunk[i] = expert_action(p, target, gain=gain, max_speed=max_speed)
        p += chunk[i] * dt
    return chunk
