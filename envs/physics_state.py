"""A MuJoCo simulation's integration state, as the snapshots of the dm_control and fast backends
save and restore it (and the gym backend's, before they held the whole MjData)."""

from __future__ import annotations

import mujoco
import numpy as np

# Everything a step depends on, including qacc_warmstart (the solver's starting point).
_INTEGRATION = mujoco.mjtState.mjSTATE_INTEGRATION


def get_integration_state(model: mujoco.MjModel, data: mujoco.MjData) -> np.ndarray:
    state = np.empty(mujoco.mj_stateSize(model, _INTEGRATION), np.float64)
    mujoco.mj_getState(model, data, state, _INTEGRATION)
    return state


def set_integration_state(model: mujoco.MjModel, data: mujoco.MjData, state: np.ndarray) -> None:
    mujoco.mj_setState(model, data, state, _INTEGRATION)
    # Recompute the derived quantities (positions, contacts, sensors) the next step starts from.
    mujoco.mj_forward(model, data)
