"""Algorithms, all registered in one registry: `algorithms.get(name)`, `algorithms.names()`."""

from algorithms.registry import AlgorithmSpec, get, names, register

__all__ = ["AlgorithmSpec", "get", "names", "register"]

import algorithms.dppo  # noqa: E402,F401 - registers "dppo"
import algorithms.fpo  # noqa: E402,F401 - registers "fpo"
import algorithms.gorl  # noqa: E402,F401 - registers "gorl-fm" and "gorl-diffusion"
import algorithms.ppo  # noqa: E402,F401 - registers "ppo"
