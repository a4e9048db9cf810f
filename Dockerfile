# syntax=docker/dockerfile:1
# ckpt-eval: the evaluation job as a container. See docker-compose.yml for the whole stack.
# The image holds no secret: db.credentials (still vault-encrypted), the checkpoints and the datasets
# are mounted at run time, and the vault password arrives as the secret file /run/secrets/vault_password.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Fixed ids so that mounted files can be made readable to the job: chown them to 10001, or run the
# container as the host user who owns them (docker-compose.yml: CKPT_EVAL_UID/CKPT_EVAL_GID).
RUN groupadd --system --gid 10001 ckpt-eval \
    && useradd --system --uid 10001 --gid ckpt-eval --create-home --home-dir /home/ckpt-eval \
        --shell /usr/sbin/nologin ckpt-eval

# Only what the package build needs: no tests, no credentials, no vault password files.
COPY pyproject.toml README.md constraints.txt /tmp/src/
COPY app/ /tmp/src/app/

# --extra-index-url (image build only): constraints.txt pins torch==2.13.0 and PyPI's Linux wheel of
# that version pulls the multi-GB CUDA stack; the PyTorch CPU index serves 2.13.0+cpu, which satisfies
# the pin. Everything else resolves to the exact versions in constraints.txt.
RUN pip install --no-cache-dir --root-user-action=ignore -c /tmp/src/constraints.txt \
        --extra-index-url https://download.pytorch.org/whl/cpu /tmp/src \
    && rm -rf /tmp/src \
    && mkdir -p /etc/ckpt-eval /srv/ckpt-eval/checkpoints /srv/ckpt-eval/data

WORKDIR /srv/ckpt-eval

ENV CKPT_EVAL_CREDENTIALS=/etc/ckpt-eval/db.credentials \
    CKPT_EVAL_CHECKPOINT_ROOT=/srv/ckpt-eval/checkpoints \
    CKPT_EVAL_DATA_DIR=/srv/ckpt-eval/data \
    CKPT_EVAL_VAULT_PASSWORD_FILE=/run/secrets/vault_password \
    ANSIBLE_LOCAL_TEMP=/tmp/ansible-local

# CKPT_EVAL_VAULT_PASSWORD_FILE lets other commands (`status`, `run --dry-run`, ...) find the secret
# too. ANSIBLE_LOCAL_TEMP: the vault library creates a scratch directory when it is imported; /tmp
# keeps that working under any uid and with a read-only root filesystem (tmpfs on /tmp).

USER ckpt-eval:ckpt-eval

ENTRYPOINT ["ckpt-eval"]
CMD ["run", "--vault-password-file", "/run/secrets/vault_password"]
