"""Everything a benchmark run needs, generated from scratch in a temporary directory.

fashion_cnn checkpoints (random initialisation, one seed each: speed does not depend on the
weights), IDX datasets of random 28x28 images, and a throwaway PostgreSQL cluster
(tests/support/pgcluster.py) with one database per experiment, init.sql applied, the app role's
password set and vault-encrypted credentials written as a deployment would.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psycopg

from ckpt_eval.credentials import encrypt_mapping
from ckpt_eval.datasets import write_idx
from tests.support.pgcluster import PgCluster, create_app_database

REPO = Path(__file__).resolve().parents[1]
VAULT_PASSWORD = "bench-vault-pass-5d1e"  # noqa: S105 (a throwaway cluster's password)
APP_PASSWORD = "bench-db-pass-0b7c"  # noqa: S105
ARCH = "fashion_cnn"
DATASET = "fashion_mnist"
CKPT_EVAL = str(Path(sys.executable).parent / "ckpt-eval")


def write_images(data_dir: Path, n: int, seed: int) -> None:
    """A fashion_mnist test split of n random images and labels in data_dir/fashion_mnist/."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    rng.shuffle(labels)
    write_idx(data_dir / DATASET / "t10k-images-idx3-ubyte", images)
    write_idx(data_dir / DATASET / "t10k-labels-idx1-ubyte", labels)


def write_checkpoints(folder: Path, count: int) -> list[Path]:
    import torch

    from ckpt_eval.architectures import build_model
    from ckpt_eval.train import save_checkpoint

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        torch.manual_seed(1000 + index)
        path = folder / f"cnn-{index:04d}.pt"
        save_checkpoint(build_model(ARCH), path)
        paths.append(path)
    return paths


@dataclass
class BenchDatabase:
    """One database of the cluster, with its credentials file and its registered checkpoints."""

    workspace: Workspace
    dbname: str
    credentials: Path
    data_dir: Path
    checkpoints: list[Path]

    def superuser(self) -> psycopg.Connection:
        cluster = self.workspace.cluster
        return psycopg.connect(
            host=str(cluster.sockdir), port=cluster.port, user="postgres", dbname=self.dbname, autocommit=True
        )

    def reset(self) -> None:
        """Every checkpoint pending again and no results: the next run starts from the same state."""
        with self.superuser() as conn:
            conn.execute("TRUNCATE ckpt_eval.evaluation_metrics, ckpt_eval.evaluation_runs")
            conn.execute(
                "UPDATE ckpt_eval.evaluations SET status = 'pending', attempt = 0, lease_owner = NULL, "
                "lease_token = NULL, lease_expires_at = NULL"
            )

    def count(self, query: str) -> int:
        with self.superuser() as conn:
            row = conn.execute(query).fetchone()
        return int(row[0]) if row else 0

    def ckpt_eval_env(self) -> dict[str, str]:
        return {
            **self.workspace.base_env,
            "CKPT_EVAL_CREDENTIALS": str(self.credentials),
            "CKPT_EVAL_VAULT_PASSWORD_FILE": str(self.workspace.password_file),
            "CKPT_EVAL_CHECKPOINT_ROOT": str(self.workspace.checkpoint_root),
            "CKPT_EVAL_DATA_DIR": str(self.data_dir),
            "CKPT_EVAL_DB_RETRIES": "2",
            "CKPT_EVAL_DB_RETRY_SECONDS": "5",
        }

    def libpq_env(self) -> dict[str, str]:
        """For the seed design's children: the app role over TCP, as the old scripts connected."""
        return {
            **self.workspace.base_env,
            "PGHOST": "127.0.0.1",
            "PGPORT": str(self.workspace.cluster.port),
            "PGDATABASE": self.dbname,
            "PGUSER": "ckpt_eval_app",
            "PGPASSWORD": APP_PASSWORD,
        }


@dataclass
class Workspace:
    root: Path
    cluster: PgCluster
    checkpoint_root: Path
    password_file: Path
    base_env: dict[str, str]
    databases: dict[str, BenchDatabase] = field(default_factory=dict)
    data_dirs: dict[int, Path] = field(default_factory=dict)
    checkpoint_files: list[Path] = field(default_factory=list)

    @classmethod
    def create(cls, checkpoints: int) -> Workspace:
        root = Path(tempfile.mkdtemp(prefix="ckpt-eval-bench-"))
        os.chmod(root, 0o755)  # noqa: S103 (the postgres user traverses it to its cluster)
        cluster = PgCluster(base=root)
        workspace = cls(
            root=root,
            cluster=cluster,
            checkpoint_root=root / "checkpoints",
            password_file=root / "vault-password",
            base_env={k: v for k, v in os.environ.items() if not k.startswith(("CKPT_EVAL_", "ANSIBLE_VAULT", "PG"))},
        )
        try:
            workspace.password_file.write_text(VAULT_PASSWORD + "\n")
            workspace.password_file.chmod(0o600)
            cluster.init()
            cluster.write_hba(["host all ckpt_eval_app 127.0.0.1/32 scram-sha-256", "host all all 127.0.0.1/32 reject"])
            cluster.start()
            cluster.wait_ready()
            workspace.checkpoint_files = write_checkpoints(workspace.checkpoint_root, checkpoints)
        except BaseException:
            workspace.destroy()
            raise
        return workspace

    def data_dir(self, images: int) -> Path:
        if images not in self.data_dirs:
            folder = self.root / f"data-{images}"
            write_images(folder, images, seed=images)
            self.data_dirs[images] = folder
        return self.data_dirs[images]

    def database(self, label: str, checkpoints: int, images: int) -> BenchDatabase:
        """A database named after ``label`` with the first ``checkpoints`` checkpoints registered."""
        if label in self.databases:
            return self.databases[label]
        dbname = f"bench_{label}"
        create_app_database(self.cluster, REPO / "init.sql", APP_PASSWORD, dbname=dbname)
        credentials = self.root / f"{dbname}.credentials"
        credentials.write_text(
            encrypt_mapping(
                {
                    "host": "127.0.0.1",
                    "port": self.cluster.port,
                    "dbname": dbname,
                    "user": "ckpt_eval_app",
                    "password": APP_PASSWORD,
                    "connect_timeout": 5,
                },
                VAULT_PASSWORD.encode(),
            )
        )
        files = self.checkpoint_files[:checkpoints]
        database = BenchDatabase(self, dbname, credentials, self.data_dir(images), files)
        with database.superuser() as conn:
            conn.execute("DELETE FROM ckpt_eval.evaluations")  # the demo rows of init.sql
            conn.execute("DELETE FROM ckpt_eval.checkpoints")
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO ckpt_eval.checkpoints (name, path, arch, dataset, sha256) VALUES (%s, %s, %s, %s, %s)",
                    [
                        (path.stem, path.name, ARCH, DATASET, hashlib.sha256(path.read_bytes()).hexdigest())
                        for path in files
                    ],
                )
            conn.execute(
                "INSERT INTO ckpt_eval.evaluations (checkpoint_name, dataset, checkpoint_id) "
                "SELECT name, dataset, checkpoint_id FROM ckpt_eval.checkpoints"
            )
        self.databases[label] = database
        return database

    def destroy(self) -> None:
        self.cluster.destroy()
        shutil.rmtree(self.root, ignore_errors=True)
