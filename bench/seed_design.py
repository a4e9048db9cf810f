"""The design ckpt-eval replaced, written faithfully: one new Python process per checkpoint.

Each process imports torch, psycopg and scikit-learn, marks the checkpoint running, loads the
state dict, evaluates through a torch DataLoader over a per-sample Dataset (one float tensor
per image, collated per batch), summarises with scikit-learn, and INSERTs the run and then
every metric row one by one before marking the checkpoint done. The harness launches these
processes one after another, as the old cron loop did.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .fixture import REPO, BenchDatabase
from .procs import Measured, run_measured

SCRIPT = r"""
import gzip, json, os, socket, struct, sys, time
from datetime import datetime, timezone

import numpy as np
import psycopg
import torch
import torch.nn.functional as F
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
from torch.utils.data import DataLoader, Dataset

from ckpt_eval.architectures import build_model

checkpoint_id, checkpoint_path, data_dir, batch_size, threads = sys.argv[1:6]
torch.set_num_threads(int(threads))
started = datetime.now(timezone.utc)


def read_idx(path):
    data = open(path, "rb").read()
    ndim = data[3]
    dims = struct.unpack(">%dI" % ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


class IdxDataset(Dataset):
    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        image = torch.from_numpy(self.images[index].astype(np.float32) / 255.0).unsqueeze(0)
        return image, int(self.labels[index])


conn = psycopg.connect()
cur = conn.cursor()
cur.execute(
    "UPDATE ckpt_eval.evaluations SET status = 'running', attempt = attempt + 1, updated_at = now() "
    "WHERE checkpoint_id = %s",
    (int(checkpoint_id),),
)
conn.commit()
cur.execute(
    "SELECT checkpoint_name, attempt FROM ckpt_eval.evaluations WHERE checkpoint_id = %s", (int(checkpoint_id),)
)
name, attempt = cur.fetchone()

model = build_model("fashion_cnn")
model.load_state_dict(torch.load(checkpoint_path, map_location="cpu", weights_only=True))
model.eval()
images = read_idx(os.path.join(data_dir, "fashion_mnist", "t10k-images-idx3-ubyte"))
labels = read_idx(os.path.join(data_dir, "fashion_mnist", "t10k-labels-idx1-ubyte")).astype(np.int64)
loader = DataLoader(IdxDataset(images, labels), batch_size=int(batch_size), shuffle=False)

loss_sum, all_labels, all_predictions = 0.0, [], []
with torch.no_grad():
    for inputs, targets in loader:
        logits = model(inputs)
        loss_sum += F.cross_entropy(logits, targets, reduction="sum").item()
        all_labels.append(targets.numpy())
        all_predictions.append(logits.argmax(dim=1).numpy())
y_true, y_pred = np.concatenate(all_labels), np.concatenate(all_predictions)
classes = list(range(10))
precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=classes, zero_division=0)
macro = precision_recall_fscore_support(y_true, y_pred, average="macro", zero_division=0)
weighted = precision_recall_fscore_support(y_true, y_pred, average="weighted", zero_division=0)
matrix = confusion_matrix(y_true, y_pred, labels=classes)
n = len(y_true)
rows = [
    ("loss", "", loss_sum / n),
    ("accuracy", "", float(np.trace(matrix)) / n),
    ("f1_macro", "", float(macro[2])),
    ("f1_weighted", "", float(weighted[2])),
    ("precision_macro", "", float(macro[0])),
    ("recall_macro", "", float(macro[1])),
]
for c in classes:
    rows += [("precision", str(c), float(precision[c])), ("recall", str(c), float(recall[c])),
             ("f1", str(c), float(f1[c])), ("support", str(c), float(support[c]))]
finished = datetime.now(timezone.utc)
cur.execute(
    "INSERT INTO ckpt_eval.evaluation_runs (checkpoint_id, checkpoint_name, attempt, dataset, status, verdict, "
    "started_at, finished_at, duration_seconds, n_samples, worker_host, worker_pid, app_version, lease_token, "
    "confusion_matrix) VALUES (%s, %s, %s, 'fashion_mnist', 'succeeded', 'pass', %s, %s, %s, %s, %s, %s, "
    "'seed', %s, %s) RETURNING run_id",
    (int(checkpoint_id), name, attempt, started, finished, (finished - started).total_seconds(), n,
     socket.gethostname(), os.getpid(), "seed-%s-%s" % (checkpoint_id, time.time_ns()),
     json.dumps(matrix.tolist())),
)
run_id = cur.fetchone()[0]
for metric, label, value in rows:
    cur.execute(
        "INSERT INTO ckpt_eval.evaluation_metrics (run_id, metric, class_label, value) VALUES (%s, %s, %s, %s)",
        (run_id, metric, label, value),
    )
cur.execute("UPDATE ckpt_eval.evaluations SET status = 'done', updated_at = now() WHERE checkpoint_id = %s",
            (int(checkpoint_id),))
conn.commit()
conn.close()
"""


def run_seed_design(database: BenchDatabase, count: int, batch_size: int, threads: int) -> list[Measured]:
    """One process per checkpoint for the first ``count`` checkpoints; one Measured per process."""
    database.reset()
    with database.superuser() as conn:
        ids = [
            (row[0], row[1])
            for row in conn.execute("SELECT checkpoint_id, path FROM ckpt_eval.checkpoints ORDER BY checkpoint_id")
        ][:count]
    env = database.libpq_env()
    results = []
    for checkpoint_id, path in ids:
        argv = [
            sys.executable,
            "-c",
            SCRIPT,
            str(checkpoint_id),
            str(Path(database.workspace.checkpoint_root) / path),
            str(database.data_dir),
            str(batch_size),
            str(threads),
        ]
        results.append(run_measured(argv, env, cwd=REPO))
    written = database.count("SELECT count(*) FROM ckpt_eval.evaluation_metrics")
    if written != 46 * len(ids):
        raise RuntimeError(f"seed design wrote {written} metric rows, expected {46 * len(ids)}")
    return results
