#!/bin/sh
# Ansible runs this to get the vault password: it prints $ANSIBLE_VAULT_PASSWORD (a CD pipeline
# secret, or exported by the operator). It never writes the password anywhere else.
if [ -z "${ANSIBLE_VAULT_PASSWORD:-}" ]; then
    echo "vault-password.sh: ANSIBLE_VAULT_PASSWORD is not set" >&2
    exit 1
fi
printf '%s\n' "$ANSIBLE_VAULT_PASSWORD"
