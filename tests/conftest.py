"""Shared fixtures: a migrated MLflow store made once per session and copied per test."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def migrated_mlflow_db(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its schema created (creating one costs ~1.4 s of migrations)."""

    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def tracking_uri(tmp_path, migrated_mlflow_db) -> str:
    """A fresh copy of the migrated store for one test."""

    path = tmp_path / "mlflow.db"
    shutil.copy(migrated_mlflow_db, path)
    return f"sqlite:///{path}"
