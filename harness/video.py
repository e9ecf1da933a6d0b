"""A GIF of one evaluation episode: MuJoCo's offscreen renderer on the evaluation env's first sub-env.

`EpisodeRecorder` is called after every step of an evaluation (`Evaluator.episode_returns`)
and draws sub-env 0 until its first episode ends, so the video shows exactly the first of the
episodes being scored. Frames are kept at about `FPS` frames per simulated second and the GIF
plays in real time. Rendering needs an OpenGL backend, chosen by MuJoCo when it is imported:
the harness sets `MUJOCO_GL=disable` unless it is set, so a recording asks for it explicitly.
The sky is drawn plain: DMC sub-envs load 1-pixel skybox textures to save memory (`envs.dmc`),
and the video shows the evaluated env itself rather than a copy with the suite's textures.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import UserError

FPS = 30  # a common video rate; DMC control steps run at 40-100 per simulated second
GL_BACKENDS = ("egl", "osmesa", "glfw")  # MuJoCo's: headless GPU or Mesa, software, a display


def frame_steps(step_seconds: float) -> int:
    """Env steps per frame: the count nearest `FPS` frames per simulated second whose duration is
    a whole number of 10 ms, the unit of a GIF's frame delays, so that the GIF plays in real time
    (a 25 ms delay, one walker step, is stored as 20 ms: 1.25x too fast). Where no count up to 4
    times the nearest gives whole 10 ms, the nearest."""

    nearest = max(1, round(1 / (FPS * step_seconds)))
    for every in range(nearest, 4 * nearest + 1):
        centiseconds = 100 * every * step_seconds
        if abs(centiseconds - round(centiseconds)) < 1e-6:
            return every
    return nearest


def check_rendering() -> None:
    """A clear error unless MuJoCo can render in this process."""

    backend = os.environ.get("MUJOCO_GL", "disable")
    if backend not in GL_BACKENDS:
        # gorl-bench sets MUJOCO_GL=disable where it is unset, so that dm_control probes no OpenGL.
        state = (
            "rendering is off (MUJOCO_GL unset or 'disable')"
            if backend == "disable"
            else (f"MUJOCO_GL is {backend!r}, which names none")
        )
        raise UserError(
            f"a video needs an OpenGL backend for MuJoCo, and {state}: run the command "
            "with MUJOCO_GL=egl (headless, with a GPU or Mesa's EGL), MUJOCO_GL=osmesa (software) or "
            "MUJOCO_GL=glfw (with a display)."
        )
    try:  # a backend whose library is missing fails here, deep inside MuJoCo's bindings or PyOpenGL
        import mujoco

        context = mujoco.GLContext(16, 16)
        context.make_current()
        context.free()
    except Exception as error:  # noqa: BLE001 - any failure means no video; its text says why
        raise _cannot_render(backend, error) from None


def _cannot_render(backend: str, error: Exception) -> UserError:
    """The error of a backend MuJoCo could not render with: what it needs, and the other backends."""

    needs = {"egl": "a GPU driver's or Mesa's EGL", "osmesa": "the OSMesa library (Mesa's libosmesa)",
             "glfw": "a display"}[backend]  # fmt: skip
    others = ", ".join(name for name in GL_BACKENDS if name != backend)
    return UserError(
        f"MuJoCo cannot render with MUJOCO_GL={backend} here ({type(error).__name__}: {error}); it needs "
        f"{needs}. Install it, or try another MUJOCO_GL: {others}."
    )


def check_simulated(task: str) -> None:
    """Refuse a toy task, which MuJoCo does not simulate, before asking for a rendering backend it
    could not use (a gym id is checked once its env is built: only then is its simulator known)."""

    from envs.tasks import GYM_PREFIX, is_dmc

    if not (task.startswith(GYM_PREFIX) or is_dmc(task)):
        raise _nothing_to_render(task)


def _nothing_to_render(task: str) -> UserError:
    return UserError(f"{task} is not simulated with MuJoCo, so it has nothing to render.")


def _mujoco_handles(env: Any) -> tuple[Any, Any, float]:
    """(MjModel, MjData, seconds per env step) of sub-env 0 of a MuJoCo-backed vector env."""

    if hasattr(env, "physics"):  # dm_control backends
        physics = env.physics[0]
        return physics.model.ptr, physics.data.ptr, env.envs[0].control_timestep()
    first = getattr(env, "envs", [None])[0]
    unwrapped = getattr(first, "unwrapped", None)
    if hasattr(unwrapped, "model") and hasattr(unwrapped, "data"):  # gymnasium MuJoCo envs
        return unwrapped.model, unwrapped.data, unwrapped.dt
    raise _nothing_to_render(env.task)


class EpisodeRecorder:
    """Frames of sub-env 0's first episode; `save` writes them as a GIF."""

    def __init__(self, env: Any, width: int = 320, height: int = 240, camera: int | None = None) -> None:
        import mujoco

        check_rendering()
        self.model, self.data, step_seconds = _mujoco_handles(env)
        # Camera 0 is the task's own view (a tracking camera on most DMC tasks); -1 is MuJoCo's free one.
        self.camera = camera if camera is not None else (0 if self.model.ncam > 0 else -1)
        if not -1 <= self.camera < self.model.ncam:
            raise UserError(f"{env.task} has cameras -1 (free) to {self.model.ncam - 1}, not {self.camera}.")
        try:
            self.renderer = mujoco.Renderer(self.model, height, width)
        except Exception as error:  # noqa: BLE001 - a missing GL library shows up as any of several errors
            raise _cannot_render(os.environ["MUJOCO_GL"], error) from None
        self.every = frame_steps(step_seconds)
        self.frame_seconds = self.every * step_seconds
        self.steps = 0
        self.recording = False
        self.frames: list[np.ndarray] = []

    def _render(self) -> np.ndarray:
        self.renderer.update_scene(self.data, camera=self.camera)
        return self.renderer.render().copy()

    def reset(self) -> None:
        """After the env's reset: the episode's initial state is the first frame."""

        self.steps, self.recording, self.frames = 0, True, [self._render()]

    def step(self, ended: np.ndarray) -> None:
        """After a step: `ended` says which sub-envs' episodes ended at it (and were reset)."""

        if not self.recording:
            return
        if ended[0]:  # sub-env 0 already shows its next episode's first state
            self.recording = False
            return
        self.steps += 1
        if self.steps % self.every == 0:
            self.frames.append(self._render())

    def save(self, path: Path) -> None:
        import imageio.v3 as iio

        self.renderer.close()
        try:
            iio.imwrite(path, np.stack(self.frames), duration=round(1000 * self.frame_seconds), loop=0)
        except OSError as error:
            raise UserError(f"cannot write the video {path}: {error.strerror or error}.") from None
