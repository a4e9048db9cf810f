#!/usr/bin/env bash
# Database init step for docker-compose.yml (the official postgres image runs it once, when it
# initialises an empty data directory, right after 10-init.sql created ckpt_eval_app without a password).
# Sets ckpt_eval_app's password from the compose secret db_app_password. The value goes to psql on
# stdin only: never in argv, never in an environment variable, and the server is told not to log the
# statement (not even when it fails).
# The image sources a non-executable *.sh instead of running it: the subshell keeps `set -u` and the
# variables to this script either way.
(
    set -Eeuo pipefail
    secret_file=/run/secrets/db_app_password
    if [[ ! -r "$secret_file" ]]; then
        echo "20-app-password.sh: cannot read $secret_file (compose secret db_app_password)" >&2
        exit 1
    fi
    # $(<file) drops trailing newlines, as Ansible does for password files; drop a CR from Windows too.
    password="$(<"$secret_file")"
    password="${password%$'\r'}"
    if [[ -z "$password" ]]; then
        echo "20-app-password.sh: $secret_file is empty" >&2
        exit 1
    fi
    # A standard SQL string literal: only the single quote needs doubling.
    literal="${password//\'/\'\'}"
    # printf is a shell builtin, so the password never appears in a process's argv.
    printf '%s\n' \
        "SET standard_conforming_strings = on;" \
        "SET log_statement = 'none';" \
        "SET log_min_error_statement = 'panic';" \
        "ALTER ROLE ckpt_eval_app PASSWORD '${literal}';" |
        psql -v ON_ERROR_STOP=1 --no-psqlrc --no-password --quiet \
            --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-postgres}"
    echo "20-app-password.sh: password of ckpt_eval_app set from the db_app_password secret"
)
