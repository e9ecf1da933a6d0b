"""Observations and rewards of the fast tasks, computed for a whole batch at once.

Each class reproduces one dm_control suite task's `get_observation` and `get_reward`
(dm_control/suite/<domain>.py) from a float64 gather buffer: after every step, `envs.fast`
copies whole MjData arrays (`fields`, e.g. qpos, xpos, sensordata) of sub-env i into row i
of that buffer, and everything else here is numpy on the whole batch, driven by column index
arrays computed once. Constants come from the dm_control task object or module itself, so
they cannot drift from the reference. `tests/test_envs_parity.py` checks every task against
dm_control, step by step.
"""

from __future__ import annotations

from collections.abc import Sequence

import mujoco
import numpy as np
from dm_control.rl import control
from dm_control.suite import cheetah, finger, fish, hopper, humanoid, walker
from dm_control.utils.rewards import tolerance

INF = float("inf")
Index = int | slice | Sequence[int] | np.ndarray


class Layout:
    """Where each gathered MjData array lands in a row of the gather buffer."""

    def __init__(self, data: mujoco.MjData, fields: Sequence[str]) -> None:
        self.fields = tuple(fields)
        self.sizes = {field: getattr(data, field).size for field in self.fields}
        self.offsets = dict(zip(self.fields, np.cumsum([0, *self.sizes.values()])[:-1].tolist(), strict=True))
        self.width = sum(self.sizes.values())

    def segment(self, field: str) -> slice:
        """The buffer columns that hold all of `data.<field>`."""

        return slice(self.offsets[field], self.offsets[field] + self.sizes[field])

    def columns(self, field: str, index: Index = slice(None)) -> np.ndarray:
        """Buffer columns of `data.<field>.ravel()[index]`."""

        return self.offsets[field] + np.atleast_1d(np.arange(self.sizes[field])[index])


def _sensor(model: mujoco.MjModel, name: str) -> np.ndarray:
    """Indices of a sensor's values in `sensordata`."""

    sensor = model.sensor(name)
    return np.arange(sensor.adr[0], sensor.adr[0] + sensor.dim[0])


def _xyz(model: mujoco.MjModel, name: str, kind: str) -> np.ndarray:
    """Indices of a body's (kind "body") or geom's ("geom") 3 coordinates in xpos/geom_xpos-like arrays."""

    index = model.body(name).id if kind == "body" else model.geom(name).id
    return 3 * index + np.arange(3)


def _frame(model: mujoco.MjModel, name: str, kind: str) -> np.ndarray:
    """Indices of a body's or geom's 9 rotation-matrix entries (row-major) in xmat/geom_xmat."""

    index = model.body(name).id if kind == "body" else model.geom(name).id
    return 9 * index + np.arange(9)


def egocentric(vectors: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """`vector.dot(frame.reshape(3, 3))` for every (N, k, 3) vector and (N, 9) frame of the batch."""

    return np.einsum("nki,nij->nkj", vectors, frames.reshape(-1, 3, 3))


def small_control(ctrl: np.ndarray) -> np.ndarray:
    """hopper/humanoid's control penalty term: (4 + mean quadratic tolerance of the controls) / 5."""

    return (4 + tolerance(ctrl, margin=1, value_at_margin=0, sigmoid="quadratic").mean(axis=1)) / 5


class FastTask:
    """One task's batched observation and reward. Subclasses set `fields` and build column indices."""

    fields: tuple[str, ...] = ()

    def __init__(self, env: control.Environment) -> None:
        self.layout = Layout(env.physics.data.ptr, self.fields)

    def observe(self, raw: np.ndarray) -> np.ndarray:
        """(N, obs_dim) float64 observations from the gather buffer, in dm_control's order."""

        raise NotImplementedError

    def reward(self, raw: np.ndarray, ctrl: np.ndarray) -> np.ndarray:
        """(N,) rewards; `ctrl` is the batch of controls of the step (MuJoCo's `data.ctrl`)."""

        raise NotImplementedError


class Cheetah(FastTask):
    fields = ("qpos", "qvel", "sensordata")

    def __init__(self, env: control.Environment) -> None:
        super().__init__(env)
        model, cols = env.physics.model.ptr, self.layout.columns
        self.obs_columns = np.concatenate([cols("qpos", slice(1, None)), cols("qvel")])
        self.speed = cols("sensordata", _sensor(model, "torso_subtreelinvel"))[0]

    def observe(self, raw: np.ndarray) -> np.ndarray:
        return raw[:, self.obs_columns]

    def reward(self, raw: np.ndarray, ctrl: np.ndarray) -> np.ndarray:
        speed, run = raw[:, self.speed], cheetah._RUN_SPEED
        return tolerance(speed, bounds=(run, INF), margin=run, value_at_margin=0, sigmoid="linear")


class Walker(FastTask):
    fields = ("xmat", "xpos", "qvel", "sensordata")

    def __init__(self, env: control.Environment) -> None:
        super().__init__(env)
        model, cols = env.physics.model.ptr, self.layout.columns
        self.move_speed = env.task._move_speed
        # orientations: the xx and xz entries of every body's frame except the world's
        bodies = np.arange(1, model.nbody)
        orientations = cols("xmat", (9 * bodies[:, None] + np.array([0, 2])).ravel())
        self.height = cols("xpos", _xyz(model, "torso", "body")[2])[0]
        self.upright = cols("xmat", _frame(model, "torso", "body")[8])[0]
        self.speed = cols("sensordata", _sensor(model, "torso_subtreelinvel"))[0]
        self.obs_columns = np.concatenate([orientations, [self.height], cols("qvel")])

    def observe(self, raw: np.ndarray) -> np.ndarray:
        return raw[:, self.obs_columns]

    def reward(self, raw: np.ndarray, ctrl: np.ndarray) -> np.ndarray:
        stand_height = walker._STAND_HEIGHT
        standing = tolerance(raw[:, self.height], bounds=(stand_height, INF), margin=stand_height / 2)
        upright = (1 + raw[:, self.upright]) / 2
        stand_reward = (3 * standing + upright) / 4
        if self.move_speed == 0:
            return stand_reward
        move_reward = tolerance(
            raw[:, self.speed],
            bounds=(self.move_speed, INF),
            margin=self.move_speed / 2,
            value_at_margin=0.5,
            sigmoid="linear",
        )
        return stand_reward * (5 * move_reward + 1) / 6


class Hopper(FastTask):
    fields = ("qpos", "qvel", "sensordata", "xipos")

    def __init__(self, env: control.Environment) -> None:
        super().__init__(env)
        model, cols = env.physics.model.ptr, self.layout.columns
        if env.task._hopping:
            raise ValueError("the fast backend implements hopper-stand only")
        self.state_columns = np.concatenate([cols("qpos", slice(1, None)), cols("qvel")])
        touch = np.concatenate([_sensor(model, "touch_toe"), _sensor(model, "touch_heel")])
        self.touch = cols("sensordata", touch)
        self.torso_z = cols("xipos", _xyz(model, "torso", "body")[2])[0]
        self.foot_z = cols("xipos", _xyz(model, "foot", "body")[2])[0]

    def observe(self, raw: np.ndarray) -> np.ndarray:
        return np.concatenate([raw[:, self.state_columns], np.log1p(raw[:, self.touch])], axis=1)

    def reward(self, raw: np.ndarray, ctrl: np.ndarray) -> np.ndarray:
        height = raw[:, self.torso_z] - raw[:, self.foot_z]
        standing = tolerance(height, (hopper._STAND_HEIGHT, 2))
        return standing * small_control(ctrl)


class Finger(FastTask):
    """finger-spin; `FingerTurn` adds the target."""

    fields = ("sensordata",)

    def __init__(self, env: control.Environment) -> None:
        super().__init__(env)
        model, cols = env.physics.model.ptr, self.layout.columns

        def sensors(*names: str) -> np.ndarray:
            return cols("sensordata", np.concatenate([_sensor(model, n) for n in names]))

        self.joints = sensors("proximal", "distal")
        self.velocity = sensors("proximal_velocity", "distal_velocity", "hinge_velocity")
        self.hinge_velocity = self.velocity[2]
        self.touch = sensors("touchtop", "touchbottom")
        # (x, z) of a site sensor: components 0 and 2
        self.tip, self.target, self.spinner = (sensors(n)[[0, 2]] for n in ("tip", "target", "spinner"))

    def relative(self, raw: np.ndarray, site: np.ndarray) -> np.ndarray:
        """(x, z) of a site relative to the hinge (the spinner), as `Physics.tip_position` computes it."""

        return raw[:, site] - raw[:, self.spinner]

    def observe(self, raw: np.ndarray) -> np.ndarray:
        position = [raw[:, self.joints], self.relative(raw, self.tip)]
        return np.concatenate([*position, raw[:, self.velocity], np.log1p(raw[:, self.touch])], axis=1)

    def reward(self, raw: np.ndarray, ctrl: np.ndarray) -> np.ndarray:
        return (raw[:, self.hinge_velocity] <= -finger._SPIN_VELOCITY).astype(np.float64)


class FingerTurn(Finger):
    def __init__(self, env: control.Environment) -> None:
        super().__init__(env)
        self.target_radius = env.task._target_radius

    def distance(self, raw: np.ndarray) -> np.ndarray:
        """Signed distance from the tip to the target surface (negative inside)."""

        to_target = self.relative(raw, self.target) - self.relative(raw, self.tip)
        return np.linalg.norm(to_target, axis=1) - self.target_radius

    def observe(self, raw: np.ndarray) -> np.ndarray:
        target = self.relative(raw, self.target)
        return np.concatenate([super().observe(raw), target, self.distance(raw)[:, None]], axis=1)

    def reward(self, raw: np.ndarray, ctrl: np.ndarray) -> np.ndarray:
        return (self.distance(raw) <= 0).astype(np.float64)


class FishSwim(FastTask):
    fields = ("qpos", "qvel", "xmat", "geom_xpos", "geom_xmat")

    def __init__(self, env: control.Environment) -> None:
        super().__init__(env)
        model, cols = env.physics.model.ptr, self.layout.columns
        self.joint_angles = cols("qpos", [model.joint(name).qposadr[0] for name in fish._JOINTS])
        self.upright = cols("xmat", _frame(model, "torso", "body")[8])[0]
        self.mouth = cols("geom_xpos", _xyz(model, "mouth", "geom"))
        self.target = cols("geom_xpos", _xyz(model, "target", "geom"))
        self.mouth_frame = cols("geom_xmat", _frame(model, "mouth", "geom"))
        self.velocity = cols("qvel")
        geom_size = env.physics.named.model.geom_size
        self.radii = geom_size[["mouth", "target"], 0].sum()

    def mouth_to_target(self, raw: np.ndarray) -> np.ndarray:
        """Mouth-to-target vector in the mouth's frame, (N, 3)."""

        to_target = raw[:, self.target] - raw[:, self.mouth]
        return egocentric(to_target[:, None, :], raw[:, self.mouth_frame])[:, 0]

    def observe(self, raw: np.ndarray) -> np.ndarray:
        joints, upright, velocity = raw[:, self.joint_angles], raw[:, [self.upright]], raw[:, self.velocity]
        return np.concatenate([joints, upright, self.mouth_to_target(raw), velocity], axis=1)

    def reward(self, raw: np.ndarray, ctrl: np.ndarray) -> np.ndarray:
        distance = np.linalg.norm(self.mouth_to_target(raw), axis=1)
        in_target = tolerance(distance, bounds=(0, self.radii), margin=2 * self.radii)
        is_upright = 0.5 * (raw[:, self.upright] + 1)
        return (7 * in_target + is_upright) / 8


class Humanoid(FastTask):
    """humanoid-stand and humanoid-run (the egocentric-features observation, not pure state)."""

    fields = ("qpos", "qvel", "xpos", "xmat", "sensordata")

    def __init__(self, env: control.Environment) -> None:
        super().__init__(env)
        model, cols = env.physics.model.ptr, self.layout.columns
        if env.task._pure_state:
            raise ValueError("the fast backend implements the feature observation of humanoid only")
        self.move_speed = env.task._move_speed
        self.joint_angles = cols("qpos", slice(7, None))  # skips the free root joint
        self.head_z = cols("xpos", _xyz(model, "head", "body")[2])[0]
        self.torso = cols("xpos", _xyz(model, "torso", "body"))
        # the order of Physics.extremities: left hand, left foot, right hand, right foot
        limbs = [f"{side}_{limb}" for side in ("left", "right") for limb in ("hand", "foot")]
        self.limbs = np.stack([cols("xpos", _xyz(model, limb, "body")) for limb in limbs])
        self.torso_frame = cols("xmat", _frame(model, "torso", "body"))
        self.torso_vertical = self.torso_frame[6:9]  # the zx, zy, zz entries
        self.com_velocity = cols("sensordata", _sensor(model, "torso_subtreelinvel"))
        self.velocity = cols("qvel")

    def observe(self, raw: np.ndarray) -> np.ndarray:
        torso_to_limbs = raw[:, self.limbs] - raw[:, None, self.torso]
        extremities = egocentric(torso_to_limbs, raw[:, self.torso_frame]).reshape(len(raw), -1)
        parts = [
            raw[:, self.joint_angles],
            raw[:, [self.head_z]],
            extremities,
            raw[:, self.torso_vertical],
            raw[:, self.com_velocity],
            raw[:, self.velocity],
        ]
        return np.concatenate(parts, axis=1)

    def reward(self, raw: np.ndarray, ctrl: np.ndarray) -> np.ndarray:
        stand_height = humanoid._STAND_HEIGHT
        standing = tolerance(raw[:, self.head_z], bounds=(stand_height, INF), margin=stand_height / 4)
        upright = tolerance(
            raw[:, self.torso_vertical[2]], bounds=(0.9, INF), sigmoid="linear", margin=1.9, value_at_margin=0
        )
        stand_reward = standing * upright
        horizontal_velocity = raw[:, self.com_velocity[:2]]
        if self.move_speed == 0:
            dont_move = tolerance(horizontal_velocity, margin=2).mean(axis=1)
            return small_control(ctrl) * stand_reward * dont_move
        speed = np.linalg.norm(horizontal_velocity, axis=1)
        move = tolerance(
            speed, bounds=(self.move_speed, INF), margin=self.move_speed, value_at_margin=0, sigmoid="linear"
        )
        return small_control(ctrl) * stand_reward * ((5 * move + 1) / 6)  # dm_control's grouping


TASKS: dict[str, type[FastTask]] = {
    "cheetah-run": Cheetah,
    "finger-spin": Finger,
    "finger-turn_hard": FingerTurn,
    "fish-swim": FishSwim,
    "hopper-stand": Hopper,
    "walker-walk": Walker,
    "humanoid-stand": Humanoid,
    "humanoid-run": Humanoid,
}
