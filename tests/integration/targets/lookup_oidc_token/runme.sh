#!/usr/bin/env bash
# The lookup oidc.tokens.oidc_token templated on 220 hosts with 20 forks, each host in a fresh worker
# process, against the test provider with refresh-token rotation and reuse detection: every host must
# get a valid token, the provider must see one refresh, and the grant must stay alive (lookup.yml).
set -eux -o pipefail

# ansible-test copies tests/integration/integration_config.yml (the test provider's facts) next to the
# targets directory, but passes it only to role targets: a runme.sh target hands it on itself.
CONFIG=../../integration_config.yml
if [ ! -f "$CONFIG" ]; then
    echo "no $CONFIG: run this target through scripts/test integration (it starts the test provider)" >&2
    exit 1
fi

HOSTS=${LOOKUP_OIDC_TOKEN_HOSTS:-220}
FORKS=20
WORK=$(mktemp -d "${TMPDIR:-/tmp}/lookup_oidc_token.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

{
    echo '[controller]'
    echo 'localhost'
    echo '[many]'
    seq -f 'h%04g' 1 "$HOSTS"
    echo '[all:vars]'
    echo 'ansible_connection=local'
} >"$WORK/inventory.ini"

# The lookup reads its paths and trust settings from the controller's environment (or ansible.cfg),
# never from host variables: cache_dir, config_dir, the password file and the provider's CA.
export OIDC_TOKENS_CACHE_DIR="$WORK/cache"
export OIDC_CONFIG_DIR="$WORK/accounts"
export OIDC_TOKENS_ENCRYPTION_PASSWORD_FILE="$WORK/password"
OIDC_TOKENS_CA_PATH=$(sed -n 's/^oidc_tokens_test_ca_path: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' "$CONFIG")
export OIDC_TOKENS_CA_PATH

ansible-playbook lookup.yml -i "$WORK/inventory.ini" --forks "$FORKS" \
    -e "@$CONFIG" -e "lookup_test_work=$WORK" -e "lookup_test_hosts=$HOSTS" "$@"
