#!/usr/bin/env bash
# The role oidc.tokens.job_tokens through the collection's playbook job_run.yml, on three local
# "workers" (localhost aliases, each with its own Unix job user, become via su), against an instance
# of its own of the provider the targets run against (node-oidc-provider or Keycloak) whose access
# tokens live 4 seconds:
#   1. a job of 18 s (4.5 access-token lifetimes) that uses its bearer-token file every second and
#      has the provider introspect it, as a resource server would: never an invalid token;
#      after the teardown every refresh token introspects inactive and nothing is left;
#   2. start twice (one exchange: the second keeps the account); job_run.yml under the name of that
#      running job is refused and leaves it alone; a failing job: the play fails, and the teardown in
#      `always` still revokes and cleans up;
#   3. teardown again, and teardown of a job that never started: both succeed;
#   4. the role's argument specs and checks refuse bad input with messages that name the variable;
#   5. the systemd units the role writes pass `systemd-analyze verify`
#   6. a Slurm batch job (job_submit.yml, a one-node Slurm of the test) that outlives several access tokens,
#      and one cancelled with scancel: each time the refreshers end the tokens by themselves, within a
#      bound, with nothing left and no job_teardown.yml run;
#   7. a job user with a runtime directory (/run/user/UID, made here as logind would) gets the token
#      there, and a cron daemon (started here if none runs) restarts a refresher that was killed;
#   8. two jobs of one job user: a bearer-token file each; a third naming another's file is refused;
#   9. the controller's record: start writes it (0600, no secret), job_status.yml lists the running jobs
#      and job_teardown.yml tears them down from it, both with an inventory that knows no worker;
#   (4, 5, 7, 8 and 9 need no second provider: only in the node-oidc-provider pass).
# Needs root (it creates the users oidcjob1..3, replacing ones an earlier run left, and removes them at the
# end), useradd, su, crontab, setfacl, munged and slurmctld (scripts/setup installs cron, acl, munge and
# slurm-wlm), and Python 3 with requests, PyNaCl and cryptography for the job users (scripts/setup installs
# python3-requests, python3-nacl, python3-cryptography).
set -eu -o pipefail
[ -z "${JOB_TOKENS_TRACE:-}" ] || set -x

say() { printf '\n=== job_tokens: %s\n' "$*"; }
die() { printf 'job_tokens: FAILED: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "this target needs root (it creates job users)"
TARGET_DIR=$(pwd)
PY=$(command -v python)
COLLECTION=$("$PY" -c 'import os, sys
for root in os.environ.get("ANSIBLE_COLLECTIONS_PATH", "").split(os.pathsep):
    path = os.path.join(root, "ansible_collections", "oidc", "tokens")
    if os.path.isdir(path):
        print(path)
        sys.exit(0)
sys.exit(1)') || die "oidc.tokens not found in ANSIBLE_COLLECTIONS_PATH (run through ansible-test, or set it)"
PLAYBOOKS=$COLLECTION/playbooks
# The test's own Python helpers import the collection's module_utils from there.
helper() { PYTHONPATH="$COLLECTION/../../..${PYTHONPATH:+:$PYTHONPATH}" "$PY" "$@"; }
USERS=(oidcjob1 oidcjob2 oidcjob3)
ACCOUNT=job1
DURATION=18
AT_TTL=4

# One run at a time on this machine: the job users are machine-wide.
LOCK_DIR=/run/lock
[ -d "$LOCK_DIR" ] || LOCK_DIR=/tmp
exec 8>"$LOCK_DIR/oidc-tokens-job_tokens-target.lock"
flock -w 900 8 || die "another run of this target holds $LOCK_DIR/oidc-tokens-job_tokens-target.lock"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/job_tokens.XXXXXX")
chmod 0755 "$WORK"   # the job users read the CA, the probe and their result directory below it
PROVIDER_STATE=$WORK/provider
CREATED_USERS=()
WATCHER=
CRON_STARTED=
RUNTIME_DIR=
# A job user and all it may have left: processes (a refresher, a job), its crontab and the role's
# /run/oidc-tokens/UID (userdel removes neither), so that a user of a later run with the same uid starts
# clean.
remove_job_user() {  # user
    local uid
    uid=$(id -u "$1") || return 1
    pkill -KILL -u "$1" 2>/dev/null || true
    crontab -r -u "$1" >/dev/null 2>&1 || true
    rm -rf "/run/oidc-tokens/$uid"
    userdel -r "$1" >/dev/null 2>&1 || { sleep 1; userdel -r "$1" >/dev/null 2>&1; }
}
cleanup() {
    local rc=$?
    set +e
    if declare -F stop_slurm >/dev/null; then
        stop_slurm
    fi
    if [ -n "$WATCHER" ]; then
        touch "$WORK/watch.stop"
        wait "$WATCHER"
    fi
    if [ -f "$WORK/inventory.yml" ] && [ "$rc" -ne 0 ]; then
        echo "job_tokens: cleaning up after a failure with job_teardown.yml" >&2
        ansible-playbook -i "$WORK/inventory.yml" "$PLAYBOOKS/job_teardown.yml" >/dev/null 2>&1
    fi
    if [ -f "$PROVIDER_STATE/provider.json" ]; then
        provider stop --state-dir "$PROVIDER_STATE" >/dev/null 2>&1
    fi
    if [ -n "$CRON_STARTED" ]; then
        pkill -x cron
    fi
    if [ -n "$RUNTIME_DIR" ]; then
        rm -rf "$RUNTIME_DIR"
    fi
    for user in "${CREATED_USERS[@]}"; do
        remove_job_user "$user" || echo "job_tokens: could not remove the user $user" >&2
    done
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT

# --- a provider of our own, with short-lived access tokens ------------------------------------------
# Another instance of the provider the other targets run against (integration_config.yml names it and
# the command of its helper, tests/support/provider.py or keycloak.py, in the checkout scripts/test runs).
CONFIG=$TARGET_DIR/../../integration_config.yml
[ -f "$CONFIG" ] || die "no $CONFIG: run this target through scripts/test integration (it starts the test provider)"
config() { "$PY" -c 'import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))[sys.argv[2]]))' "$CONFIG" "$1"; }
KIND=$(config oidc_tokens_test_kind | tr -d '"')
mapfile -t PROVIDER_CLI < <(config oidc_tokens_test_provider_cli | "$PY" -c 'import json, sys; print("\n".join(json.load(sys.stdin)))')
provider() { "${PROVIDER_CLI[@]}" "$@" 9>&- 8>&-; }

say "starting $KIND with $AT_TTL s access tokens"
provider start --state-dir "$PROVIDER_STATE" --tls --at-ttl "$AT_TTL" >"$WORK/provider.json"
chmod 0755 "$PROVIDER_STATE"
fact() { "$PY" -c 'import json, sys; d = json.load(open(sys.argv[1])); print(eval(sys.argv[2], {}, d))' "$WORK/provider.json" "$1"; }
ISSUER=$(fact issuer)
CA=$(fact ca_path)
echo "issuer $ISSUER"

# --- the workers' users ----------------------------------------------------------------------------
# These users are this target's own: one left by a run that was killed is removed, with what it left.
for user in "${USERS[@]}"; do
    if getent passwd "$user" >/dev/null; then
        echo "job_tokens: removing $user, left by an earlier run"
        remove_job_user "$user" || die "could not remove $user, left by an earlier run"
    fi
    useradd --create-home --shell /bin/bash "$user"
    CREATED_USERS+=("$user")
    rm -rf "/run/oidc-tokens/$(id -u "$user")"
done
mkdir -m 1777 "$WORK/results"
install -m 0644 "$TARGET_DIR/files/bearer_token_probe.py" "$WORK/bearer_token_probe.py"

# Secrets reach the playbooks through the environment only. The subject token is alice's access
# token, fetched when each worker's exchange runs (the pipe lookup is templated then): it lives
# only 4 seconds, like every access token of this provider.
export JOB_TOKENS_TEST_CLIENT_SECRET JOB_TOKENS_TEST_RS_SECRET
JOB_TOKENS_TEST_CLIENT_SECRET=$(fact "clients['oidc-tokens-exchanger']['client_secret']")
JOB_TOKENS_TEST_RS_SECRET=$(fact "clients['plain-client']['client_secret']")
INTROSPECTION_URL=$("$PY" -c 'import json, sys, requests
op = json.load(open(sys.argv[1]))
print(requests.get(op["issuer"] + "/.well-known/openid-configuration", verify=op["ca_path"], timeout=10).json()["introspection_endpoint"])' "$WORK/provider.json")

cat >"$WORK/inventory.yml" <<EOF
all:
  hosts:
    localhost:
      ansible_connection: local
      ansible_python_interpreter: "{{ ansible_playbook_python }}"
  children:
    workers:
      hosts:
        worker1: {job_tokens_user: oidcjob1}
        worker2: {job_tokens_user: oidcjob2}
        worker3: {job_tokens_user: oidcjob3}
      vars:
        ansible_connection: local
        ansible_python_interpreter: /usr/bin/python3
        ansible_become_method: su
        job_tokens_account: $ACCOUNT
        job_tokens_issuer: $ISSUER
        job_tokens_client_id: oidc-tokens-exchanger
        job_tokens_client_secret: "{{ lookup('ansible.builtin.env', 'JOB_TOKENS_TEST_CLIENT_SECRET') }}"
        job_tokens_subject_token: >-
          {{ lookup('ansible.builtin.pipe', '${PROVIDER_CLI[*]} user-token --state-dir $PROVIDER_STATE') }}
        job_tokens_scope: [openid, compute.read]
        job_tokens_lifetime: 3600
        job_tokens_min_valid_period: 1
        job_tokens_ca_path: $CA
        job_tokens_start_timeout: 30
        job_tokens_record_path: $WORK/record/jobs.json
        job_command: >-
          python3 $WORK/bearer_token_probe.py --check introspect --duration $DURATION --interval 1
          --introspection-url $INTROSPECTION_URL --client-id plain-client --ca $CA
          --summary $WORK/results/{{ job_tokens_user }}.json --label {{ inventory_hostname }}
        job_environment:
          PROBE_CLIENT_SECRET: "{{ lookup('ansible.builtin.env', 'JOB_TOKENS_TEST_RS_SECRET') }}"
        job_poll: 2
EOF

# --- 1. a job that outlives several access tokens ----------------------------------------------------
say "1. job_run.yml on worker1..3: a $DURATION s job that introspects its bearer token every second"
helper "$TARGET_DIR/watch_accounts.py" "$WORK/tokens.json" "$WORK/watch.stop" "${USERS[@]/%/:$ACCOUNT}" &
WATCHER=$!
sleep 1
kill -0 "$WATCHER" 2>/dev/null || die "the account watcher did not start"
ansible-playbook -i "$WORK/inventory.yml" "$PLAYBOOKS/job_run.yml" "$@"
touch "$WORK/watch.stop"
wait "$WATCHER"
WATCHER=
provider counts --state-dir "$PROVIDER_STATE" >"$WORK/counts.json"
helper "$TARGET_DIR/check_job.py" "$WORK/provider.json" "$WORK/counts.json" "$WORK/tokens.json" "$WORK/results" "$DURATION" "$ACCOUNT" \
    "${USERS[@]}"

# --- 2. start twice; a job_run.yml under the running job's name; a failing job: it still revokes -------
say "2. job_start.yml twice on worker1 (one exchange); job_run.yml under that running job's name is refused and leaves it alone; a failing job_run.yml still revokes"
stat_of() {  # exchange or revocation: how many succeeded since the provider started
    provider counts --state-dir "$PROVIDER_STATE" | "$PY" -c 'import json, sys
counts = json.load(sys.stdin)
print(counts["requests"][sys.argv[1]] - counts["failed"][sys.argv[1]])' "$1"
}
revoked_before=$(stat_of revocation)
exchanged_before=$(stat_of exchange)
uid=$(id -u oidcjob1)
for run in 1 2; do
    ansible-playbook -i "$WORK/inventory.yml" "$PLAYBOOKS/job_start.yml" --limit worker1 >"$WORK/start-$run.log" 2>&1 ||
        { cat "$WORK/start-$run.log"; die "job_start.yml failed"; }
done
# ok, not changed: the account kept, the refresher program byte-identical, its files and schedule as they were.
grep -A1 'TASK \[oidc.tokens.job_tokens : Exchange the subject token' "$WORK/start-2.log" | grep -q '^ok: \[worker1\]' ||
    { cat "$WORK/start-2.log"; die "the second start did not keep the account, or changed the refresher"; }
[ "$(stat_of exchange)" -eq $((exchanged_before + 1)) ] || die "two starts exchanged twice"
token_before=$(cat "/run/oidc-tokens/$uid/bt_u$uid-$ACCOUNT")
if ansible-playbook -i "$WORK/inventory.yml" "$PLAYBOOKS/job_run.yml" --limit worker1 -e job_command=true \
        >"$WORK/duplicate.log" 2>&1; then
    cat "$WORK/duplicate.log"
    die "job_run.yml started a job under the name of a running one"
fi
grep -q "Account .$ACCOUNT. of oidcjob1 has a refresher already" "$WORK/duplicate.log" ||
    { cat "$WORK/duplicate.log"; die "the second job was refused without saying why"; }
if grep -q 'TASK \[oidc.tokens.job_tokens : Stop the refresher' "$WORK/duplicate.log"; then
    cat "$WORK/duplicate.log"
    die "the refused job_run.yml tore down the running job's tokens"
fi
[ -e "/home/oidcjob1/.config/oidc-agent/$ACCOUNT" ] || die "the running job lost its account"
[ "$(stat_of revocation)" -eq "$revoked_before" ] || die "the refused job_run.yml revoked the running job's refresh token"
[ -s "/run/oidc-tokens/$uid/bt_u$uid-$ACCOUNT" ] || die "the running job lost its token file"
[ "$(stat_of exchange)" -eq $((exchanged_before + 1)) ] || die "the refused job_run.yml exchanged"
echo "ok: job_run.yml under the running job's name is refused; the running job keeps its account and token (was ${#token_before} bytes)"
ansible-playbook -i "$WORK/inventory.yml" "$PLAYBOOKS/job_teardown.yml" --limit worker1 >/dev/null
[ "$(stat_of revocation)" -eq $((revoked_before + 1)) ] || die "teardown did not revoke"
# shellcheck disable=SC2016 # $BEARER_TOKEN_FILE is the job's, expanded on the worker
if ansible-playbook -i "$WORK/inventory.yml" "$PLAYBOOKS/job_run.yml" --limit worker1 \
        -e '{"job_command": "test -s \"$BEARER_TOKEN_FILE\" && exit 3"}' >"$WORK/failing.log" 2>&1; then
    cat "$WORK/failing.log"
    die "job_run.yml succeeded although the job failed"
fi
grep -q '"rc": 3' "$WORK/failing.log" || { cat "$WORK/failing.log"; die "the job did not run with its token"; }
[ "$(stat_of exchange)" -eq $((exchanged_before + 2)) ] || die "the failing job did not exchange once"
[ "$(stat_of revocation)" -eq $((revoked_before + 2)) ] ||
    { cat "$WORK/failing.log"; die "the failing job's refresh token was not revoked"; }
for path in "/home/oidcjob1/.config/oidc-agent/$ACCOUNT" "/run/oidc-tokens/$uid/bt_u$uid-$ACCOUNT" "/run/oidc-tokens/$uid/$ACCOUNT.password" \
    "/home/oidcjob1/.config/oidc-tokens/refresher/$ACCOUNT.json"; do
    [ ! -e "$path" ] || die "$path is left after the failing job"
done
! crontab -l -u oidcjob1 2>/dev/null | grep -q oidc-tokens-refresher || die "the cron entry is left after the failing job"
echo "ok: one exchange for two starts; the failing job's refresh token was revoked; nothing is left"

# --- 3. teardown is idempotent and safe without a start ----------------------------------------------
say "3. teardown again, and for an account that never started"
ansible-playbook -i "$WORK/inventory.yml" "$PLAYBOOKS/job_teardown.yml" | tee "$WORK/teardown-again.log"
grep -Eq 'worker[123] +: ok=[0-9]+ +changed=0 +unreachable=0 +failed=0' "$WORK/teardown-again.log" ||
    die "a second teardown changed something or failed"
ansible-playbook -i "$WORK/inventory.yml" "$PLAYBOOKS/job_teardown.yml" -e job_tokens_account=never-started >/dev/null
echo "ok: teardown is idempotent"

# --- 3b. check mode ----------------------------------------------------------------------------------
say "3b. start and teardown in check mode report changes and make none"
left_of_worker1() {  # what start leaves on worker1 (the job user oidcjob1)
    local uid found=()
    uid=$(id -u oidcjob1)
    for path in "/home/oidcjob1/.config/oidc-agent/$ACCOUNT" "/run/oidc-tokens/$uid/$ACCOUNT.password" \
        "/run/oidc-tokens/$uid/bt_u$uid-$ACCOUNT" "/home/oidcjob1/.config/oidc-tokens/refresher/$ACCOUNT.json"; do
        [ ! -e "$path" ] || found+=("$path")
    done
    if crontab -l -u oidcjob1 2>/dev/null | grep -q oidc-tokens-refresher; then found+=(cron); fi
    echo "${found[*]}"
}
ansible-playbook -i "$WORK/inventory.yml" "$PLAYBOOKS/job_start.yml" --limit worker1 --check --diff >"$WORK/check-start.log" 2>&1 ||
    { cat "$WORK/check-start.log"; die "job_start.yml --check failed"; }
# Two changes: the exchange and refresher on the worker, and the controller's record of the job.
grep -Eq 'worker1 +: ok=[0-9]+ +changed=2 ' "$WORK/check-start.log" ||
    { cat "$WORK/check-start.log"; die "start in check mode did not report the exchange and refresher it would make"; }
grep -q '"token_file": "/run/oidc-tokens/' "$WORK/check-start.log" ||
    { cat "$WORK/check-start.log"; die "start in check mode showed no diff of the refresher configuration"; }
[ -z "$(left_of_worker1)" ] || die "start in check mode left $(left_of_worker1)"
ansible-playbook -i "$WORK/inventory.yml" "$PLAYBOOKS/job_start.yml" --limit worker1 >"$WORK/start-real.log" 2>&1 ||
    { cat "$WORK/start-real.log"; die "job_start.yml failed"; }
revoked_before=$(stat_of revocation)
ansible-playbook -i "$WORK/inventory.yml" "$PLAYBOOKS/job_teardown.yml" --limit worker1 --check >"$WORK/check-teardown.log" 2>&1 ||
    { cat "$WORK/check-teardown.log"; die "job_teardown.yml --check failed"; }
grep -Eq 'worker1 +: ok=[0-9]+ +changed=2 ' "$WORK/check-teardown.log" ||
    { cat "$WORK/check-teardown.log"; die "teardown in check mode did not report what it would remove"; }
[ "$(left_of_worker1 | wc -w)" -eq 5 ] || die "teardown in check mode removed something: only $(left_of_worker1) is left"
[ "$(stat_of revocation)" -eq "$revoked_before" ] || die "teardown in check mode revoked"
ansible-playbook -i "$WORK/inventory.yml" "$PLAYBOOKS/job_teardown.yml" --limit worker1 >/dev/null
[ -z "$(left_of_worker1)" ] || die "teardown left $(left_of_worker1)"
[ "$(stat_of revocation)" -eq $((revoked_before + 1)) ] || die "teardown after check mode did not revoke"
echo "ok: check mode reports, changes nothing, revokes nothing"

# --- 6. a Slurm batch job whose tokens end with it -------------------------------------------------------
# A one-node Slurm of this test (tests/support/slurm_cluster.py: Debian's munge, slurmctld and slurmd, started
# directly and stopped at the end). job_submit.yml starts the tokens, submits the job with sbatch and ties each
# worker's refresher to the job id; nothing but the refreshers ends the tokens: no job_teardown.yml runs.
JOB_POLL=2
BOUND=$((JOB_POLL + 20))
SLURM_DIR=$WORK/slurm
SUPPORT=$(dirname "${PROVIDER_CLI[-1]}")
stop_slurm() { [ ! -f "$SLURM_DIR/slurm.conf" ] || helper "$SUPPORT/slurm_cluster.py" stop --dir "$SLURM_DIR"; }
slurm_state() { squeue --noheader --states=all --jobs="$1" --format=%T 2>/dev/null || true; }
tokens_end_with_job() {  # job id, users...: wait for the job's end, then for every worker's tokens to end
    local id=$1 state ended user uid deadline
    shift
    deadline=$((SECONDS + 120))
    while state=$(slurm_state "$id"); [ -n "$state" ] && [[ ! "$state" =~ ^(COMPLETED|CANCELLED|FAILED|TIMEOUT)$ ]]; do
        [ "$SECONDS" -lt "$deadline" ] || die "Slurm job $id did not end (it is $state)"
        sleep 0.2
    done
    ended=$(date +%s%N)
    deadline=$((SECONDS + BOUND))
    for user in "$@"; do
        uid=$(id -u "$user")
        while [ -e "/home/$user/.config/oidc-agent/$ACCOUNT" ] || [ -e "/run/oidc-tokens/$uid/bt_u$uid-$ACCOUNT" ]; do
            [ "$SECONDS" -lt "$deadline" ] || die "the tokens of $user outlived Slurm job $id by more than $BOUND s"
            sleep 0.2
        done
    done
    echo "Slurm job $id ended (${state:-forgotten}); the tokens of $* ended $(( ($(date +%s%N) - ended) / 1000000 )) ms" \
        "later (job_poll $JOB_POLL s, bound $BOUND s)"
}
submit() {  # hosts, job script: job_submit.yml; prints the job id
    ansible-playbook -i "$WORK/inventory.yml" "$PLAYBOOKS/job_submit.yml" --limit "$1" -e job_script="$2" \
        -e job_slurm_conf="$SLURM_CONF" -e job_tokens_job_poll=$JOB_POLL \
        -e '{"job_environment": {"PROBE_CLIENT_SECRET": "{{ lookup(\"ansible.builtin.env\", \"JOB_TOKENS_TEST_RS_SECRET\") }}"}}' \
        >"$WORK/submit.log" 2>&1 || { cat "$WORK/submit.log" >&2; die "job_submit.yml failed"; }
    sed -n 's/.*"msg": "Slurm job \([0-9]*\);.*/\1/p' "$WORK/submit.log" | head -1
}
watch_accounts() {  # users...: remember their refresh tokens until watch.stop appears
    rm -f "$WORK/watch.stop"
    helper "$TARGET_DIR/watch_accounts.py" "$WORK/slurm-tokens.json" "$WORK/watch.stop" "${@/%/:$ACCOUNT}" &
    WATCHER=$!
}
end_watch() {
    touch "$WORK/watch.stop"
    wait "$WATCHER"
    WATCHER=
}
if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
    die "no slurmctld or munged: scripts/setup installs Debian's slurm-wlm and munge"
fi
say "6. job_submit.yml: a Slurm job of $DURATION s that introspects its token every second; its tokens end with it"
helper "$SUPPORT/slurm_cluster.py" start --dir "$SLURM_DIR" >"$WORK/slurm.json" || die "the test's Slurm did not start"
export SLURM_CONF=$SLURM_DIR/slurm.conf
cat >"$WORK/slurm_job.sh" <<EOF
#!/bin/bash
#SBATCH --output=/dev/null
exec python3 $WORK/bearer_token_probe.py --check introspect --duration $DURATION --interval 1 \\
    --introspection-url $INTROSPECTION_URL --client-id plain-client --ca $CA \\
    --summary $WORK/results/oidcjob1.json --label slurm
EOF
chmod 0755 "$WORK/slurm_job.sh"
rm -f "$WORK/results/oidcjob1.json"
watch_accounts oidcjob1
id=$(submit worker1 "$WORK/slurm_job.sh")
[ -n "$id" ] || { cat "$WORK/submit.log"; die "job_submit.yml named no job id"; }
tokens_end_with_job "$id" oidcjob1
end_watch
helper "$TARGET_DIR/check_job.py" --no-counts "$WORK/provider.json" /dev/null "$WORK/slurm-tokens.json" \
    "$WORK/results" "$DURATION" "$ACCOUNT" oidcjob1

say "6b. a Slurm job tied to all three workers, cancelled with scancel: every worker's tokens end with it"
printf '#!/bin/bash\n#SBATCH --output=/dev/null\nsleep 600\n' >"$WORK/slurm_sleep.sh"
chmod 0755 "$WORK/slurm_sleep.sh"
watch_accounts "${USERS[@]}"
id=$(submit worker1 "$WORK/slurm_sleep.sh")
[ -n "$id" ] || { cat "$WORK/submit.log"; die "job_submit.yml named no job id"; }
# The other workers' job users differ (these workers are one machine), so their token files do too, which
# job_submit.yml refuses (one job environment): they are tied to the running job with job_start.yml.
ansible-playbook -i "$WORK/inventory.yml" "$PLAYBOOKS/job_start.yml" --limit worker2,worker3 -e job_tokens_job_poll=$JOB_POLL \
    -e "{\"job_tokens_job\": {\"kind\": \"slurm\", \"id\": \"$id\", \"slurm_conf\": \"$SLURM_CONF\"}}" \
    >"$WORK/tie.log" 2>&1 || { cat "$WORK/tie.log"; die "job_start.yml with job_tokens_job failed"; }
if ansible-playbook -i "$WORK/inventory.yml" "$PLAYBOOKS/job_start.yml" --limit worker2 \
        -e "{\"job_tokens_job\": {\"kind\": \"slurm\", \"id\": \"$((id + 1000))\"}}" >"$WORK/takeover.log" 2>&1; then
    cat "$WORK/takeover.log"
    die "a second job took over the tokens of a running one"
fi
grep -q "Account .$ACCOUNT. already holds the tokens of slurm job $id, while this task names slurm job $((id + 1000))" \
    "$WORK/takeover.log" || { cat "$WORK/takeover.log"; die "the takeover was refused without saying why"; }
echo "ok: a second job under the name of a running one is refused"
sleep $((JOB_POLL + 1))     # the refreshers look at the running job: nothing ends
for user in "${USERS[@]}"; do
    [ -e "/home/$user/.config/oidc-agent/$ACCOUNT" ] || die "$user has no account while the job runs"
done
runuser -u oidcjob1 -- env SLURM_CONF="$SLURM_CONF" scancel "$id"
tokens_end_with_job "$id" "${USERS[@]}"
end_watch
helper "$TARGET_DIR/check_job.py" --no-job --no-counts "$WORK/provider.json" /dev/null "$WORK/slurm-tokens.json" \
    "$WORK/results" "$DURATION" "$ACCOUNT" "${USERS[@]}"
ansible-playbook -i "$WORK/inventory.yml" "$PLAYBOOKS/job_teardown.yml" >"$WORK/teardown-after-slurm.log" 2>&1 ||
    { cat "$WORK/teardown-after-slurm.log"; die "job_teardown.yml failed after the tokens ended with the job"; }
# Nothing on the workers (only the controller's record, which still listed them, changes).
[ "$(grep -A4 'TASK \[oidc.tokens.job_tokens : Stop the refresher' "$WORK/teardown-after-slurm.log" | grep -c '^ok: \[worker')" -eq 3 ] ||
    { cat "$WORK/teardown-after-slurm.log"; die "job_teardown.yml after the tokens ended with the job changed something"; }
echo "ok: job_teardown.yml afterwards changes nothing on the workers"
stop_slurm

# Steps 4, 5, 7, 8 and 9 check the role's input, its units, the runtime directory, cron, two jobs of a
# user and the record, where a second provider adds nothing: they run in the node-oidc-provider pass only.
if [ "$KIND" = node-oidc-provider ]; then
    # --- 4. bad input --------------------------------------------------------------------------------------
    say "4. bad input is refused with messages that name the variable"
    if ! ansible-playbook -i "$WORK/inventory.yml" "$TARGET_DIR/argspec.yml" >"$WORK/argspec.log" 2>&1; then
        cat "$WORK/argspec.log"
        die "a bad input was not refused as expected"
    fi
    # The refusals, one line each (the full output, with ansible-core's argument spec dumps, is long).
    sed -n 's/^ *"msg": "\(.*\)"$/ok: refused \1/p' "$WORK/argspec.log" | grep -v '^ok: refused All assertions passed'

    # --- 5. the systemd units ------------------------------------------------------------------------------
    say "5. the systemd units pass systemd-analyze verify"
    command -v systemd-analyze >/dev/null 2>&1 || die "no systemd-analyze: scripts/setup installs Debian's systemd"
    unit=$(helper "$TARGET_DIR/render_units.py" "$WORK/units" oidcjob1 "$ACCOUNT")
    [ "$unit" = "oidc-tokens-refresher-oidcjob1-$ACCOUNT" ] || die "the unit is named $unit"
    if ! systemd-analyze verify --man=no "$WORK/units/$unit.service" "$WORK/units/$unit.timer" >"$WORK/verify.log" 2>&1 ||
            grep -F "$WORK/units" "$WORK/verify.log"; then
        cat "$WORK/verify.log"
        die "systemd-analyze verify found fault with the units"
    fi
    echo "ok: $unit.service and $unit.timer verify"

    # --- 7. the runtime directory, and cron bringing a dead refresher back ------------------------------
    say "7. a job user with a runtime directory gets the token there; cron restarts a refresher that died"
    uid=$(id -u oidcjob2)
    runtime=/run/user/$uid
    [ ! -e "$runtime" ] || die "$runtime exists already: this target makes it (as logind would) and removes it"
    install -d -m 0700 -o oidcjob2 -g "$(id -g oidcjob2)" "$runtime"
    RUNTIME_DIR=$runtime
    if ! pgrep -x cron >/dev/null; then
        cron || die "cron did not start"     # Debian's cron daemonizes; stopped again in cleanup
        CRON_STARTED=1
    fi
    ansible-playbook -i "$WORK/inventory.yml" "$PLAYBOOKS/job_start.yml" --limit worker2 >"$WORK/start-runtime.log" 2>&1 ||
        { cat "$WORK/start-runtime.log"; die "job_start.yml failed"; }
    [ -s "$runtime/bt_u$uid-$ACCOUNT" ] || die "the bearer-token file is not in the runtime directory $runtime"
    [ ! -e "/run/oidc-tokens/$uid/bt_u$uid-$ACCOUNT" ] || die "a bearer-token file is in /run/oidc-tokens as well"
    [ "$(stat -c %a:%U "$runtime/bt_u$uid-$ACCOUNT")" = 600:oidcjob2 ] || die "the bearer-token file is not 0600 of oidcjob2"
    echo "ok: the token is in the runtime directory: \$XDG_RUNTIME_DIR/bt_u$uid-$ACCOUNT"
    refresher_pid() { pgrep -u oidcjob2 -f "oidc-tokens-refresher.* $ACCOUNT\$" | head -1; }
    old=$(refresher_pid)
    [ -n "$old" ] || die "no refresher runs for oidcjob2"
    kill -KILL "$old"
    died=$SECONDS
    echo "killed the refresher (pid $old); cron starts the watchdog entry every minute"
    until new=$(refresher_pid) && [ -n "$new" ] && [ "$new" != "$old" ]; do
        [ $((SECONDS - died)) -lt 75 ] || die "cron did not restart the refresher within 75 s"
        sleep 1
    done
    rm -f "$runtime/bt_u$uid-$ACCOUNT"    # the restarted loop must write it again
    for _ in $(seq 1 30); do [ -s "$runtime/bt_u$uid-$ACCOUNT" ] && break; sleep 0.5; done
    [ -s "$runtime/bt_u$uid-$ACCOUNT" ] || die "the restarted refresher did not write the bearer-token file"
    echo "ok: cron restarted the refresher $((SECONDS - died)) s after it died (pid $new), and it serves the token again"
    ansible-playbook -i "$WORK/inventory.yml" "$PLAYBOOKS/job_teardown.yml" --limit worker2 >/dev/null
    [ -z "$(ls -A "$runtime")" ] || die "teardown left $(ls -A "$runtime") in $runtime"
    echo "ok: teardown left the runtime directory empty"
    rmdir "$runtime"
    RUNTIME_DIR=

    # --- 8. two jobs of one user -----------------------------------------------------------------------
    say "8. two jobs of one job user: each its own bearer-token file; taking the other's file is refused"
    uid=$(id -u oidcjob3)
    start_as() {  # account, more arguments: job_start.yml on worker3
        local account=$1
        shift
        ansible-playbook -i "$WORK/inventory.yml" "$PLAYBOOKS/job_start.yml" --limit worker3 -e job_tokens_account="$account" "$@"
    }
    start_as "$ACCOUNT" >"$WORK/two-1.log" 2>&1 || { cat "$WORK/two-1.log"; die "job_start.yml of $ACCOUNT failed"; }
    start_as job2 >"$WORK/two-2.log" 2>&1 || { cat "$WORK/two-2.log"; die "job_start.yml of job2 failed"; }
    first=/run/oidc-tokens/$uid/bt_u$uid-$ACCOUNT
    second=/run/oidc-tokens/$uid/bt_u$uid-job2
    if [ ! -s "$first" ] || [ ! -s "$second" ]; then
        die "the two jobs have no token files of their own ($first, $second)"
    fi
    ! cmp -s "$first" "$second" || die "the two jobs' token files hold the same token"
    [ "$(pgrep -u oidcjob3 -f 'oidc-tokens-refresher.* (job1|job2)$' | wc -l)" -ge 2 ] || die "not two refreshers"
    if start_as job3 -e job_tokens_token_file="$first" >"$WORK/two-3.log" 2>&1; then
        cat "$WORK/two-3.log"
        die "a third job was given the first job's token file"
    fi
    grep -q "$first is the bearer-token file of account $ACCOUNT of oidcjob3 already" "$WORK/two-3.log" ||
        { cat "$WORK/two-3.log"; die "the shared token file was refused without saying why"; }
    if [ -e "/home/oidcjob3/.config/oidc-agent/job3" ] || [ -e "/run/oidc-tokens/$uid/job3.password" ]; then
        die "the refused start left an account or a password of job3"
    fi
    echo "ok: $first and $second, one per job; a third job naming the first one's file is refused and leaves nothing"
    ansible-playbook -i "$WORK/inventory.yml" "$PLAYBOOKS/job_teardown.yml" --limit worker3 >/dev/null
    ansible-playbook -i "$WORK/inventory.yml" "$PLAYBOOKS/job_teardown.yml" --limit worker3 -e job_tokens_account=job2 >/dev/null
    if [ -e "$first" ] || [ -e "$second" ]; then
        die "teardown left a token file"
    fi

    # --- 9. the controller's record: status and teardown without the inventory -------------------------------
    say "9. start records the workers on the controller; job_status.yml lists them; job_teardown.yml tears down from the record alone"
    record=$WORK/record/jobs.json
    ansible-playbook -i "$WORK/inventory.yml" "$PLAYBOOKS/job_start.yml" --limit worker1,worker2 >"$WORK/start-record.log" 2>&1 ||
        { cat "$WORK/start-record.log"; die "job_start.yml failed"; }
    [ "$(stat -c %a "$record"):$(stat -c %a "$(dirname "$record")")" = 600:700 ] || die "the record is not 0600 in a 0700 directory"
    ! grep -qF "$JOB_TOKENS_TEST_CLIENT_SECRET" "$record" || die "the record holds the client secret"
    "$PY" - "$record" "$ISSUER" <<'EOF' || die "the record does not say what start set up"
import json, sys
jobs = json.load(open(sys.argv[1]))['jobs']
assert sorted(jobs) == ['job1@worker1', 'job1@worker2'], sorted(jobs)
for worker, user in (('worker1', 'oidcjob1'), ('worker2', 'oidcjob2')):
    entry = jobs['job1@' + worker]
    uid = __import__('pwd').getpwnam(user).pw_uid
    assert entry['job_user'] == user and entry['issuer'] == sys.argv[2] and entry['client_id'] == 'oidc-tokens-exchanger'
    assert entry['token_file'] == '/run/oidc-tokens/%d/bt_u%d-job1' % (uid, uid) and entry['lifetime_end'] > 0
    assert entry['connection']['ansible_connection'] == 'local' and entry['connection']['ansible_become_method'] == 'su'
print('ok: the record names both workers, their job users, issuer, client, token files and lifetime ends')
EOF
    # An inventory that knows none of the workers: what reaches them comes from the record.
    printf 'localhost ansible_connection=local ansible_python_interpreter=%s\n' "$PY" >"$WORK/bare-inventory.ini"
    ansible-playbook -i "$WORK/bare-inventory.ini" "$PLAYBOOKS/job_status.yml" -e job_tokens_record_path="$record" \
        >"$WORK/status.log" 2>&1 || { cat "$WORK/status.log"; die "job_status.yml failed"; }
    for worker in worker1 worker2; do
        grep -A12 "ok: \[$worker\] => {" "$WORK/status.log" | grep -q '"state": "running"' ||
            { cat "$WORK/status.log"; die "job_status.yml does not show the job running on $worker"; }
    done
    # A number of seconds (ansible-core before 2.19 shows it as text: "token_valid_for": "2").
    grep -q '"token_valid_for": "\?[0-9]' "$WORK/status.log" || { cat "$WORK/status.log"; die "job_status.yml shows no validity"; }
    sed -n '/^ok: \[worker[12]\] => {/,/^}/p' "$WORK/status.log"
    echo "ok: job_status.yml, with an inventory that knows no worker, shows the job running on worker1 and worker2"
    revoked_before=$(stat_of revocation)
    ansible-playbook -i "$WORK/bare-inventory.ini" "$PLAYBOOKS/job_teardown.yml" -e job_from_record=true \
        -e job_tokens_record_path="$record" >"$WORK/teardown-record.log" 2>&1 ||
        { cat "$WORK/teardown-record.log"; die "job_teardown.yml from the record failed"; }
    [ "$(stat_of revocation)" -eq $((revoked_before + 2)) ] || die "teardown from the record did not revoke both refresh tokens"
    for user in oidcjob1 oidcjob2; do
        [ ! -e "/home/$user/.config/oidc-agent/$ACCOUNT" ] || die "teardown from the record left $user's account"
    done
    "$PY" -c 'import json, sys; assert json.load(open(sys.argv[1]))["jobs"] == {}' "$record" ||
        die "the record still lists the workers torn down"
    echo "ok: job_teardown.yml from the record alone revoked both refresh tokens, removed the accounts and emptied the record"
else
    say "4., 5., 7., 8. and 9. (argument checks, units, runtime directory and cron, two jobs, the record) run in the node-oidc-provider pass"
fi
say "all passed"
