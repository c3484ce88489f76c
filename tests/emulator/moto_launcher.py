"""Start moto_server on a loopback port with fixes that make Secrets Manager behave as the real
service does where ecs-reloader depends on it (see ../shared/emulator-notes.md):

1. ListSecretVersionIds reports each version's stored creation date, not the current time.
2. UpdateSecretVersionStage updates the secret's LastChangedDate, as a stage move does in AWS,
   and moving AWSCURRENT makes that version the default one (moto kept the old default, so a
   later PutSecretValue left two versions labelled AWSCURRENT).
3. PutSecretValue moves only AWSCURRENT (and AWSPREVIOUS): moto replaced every label of the old
   current version with AWSPREVIOUS, dropping custom labels such as "blue".
4. RotateSecret with a rotation Lambda plays the rotation's steps itself (moto would run the
   Lambda in Docker): createSecret stages a new version AWSPENDING (or reuses the pending version
   of the same ClientRequestToken, as a retried rotation does), finishSecret moves AWSCURRENT to
   it, and only then is LastRotatedDate set, as AWS sets it only when a rotation completes
   successfully. A Lambda whose function name ends in "-failing" fails after createSecret: the
   version stays AWSPENDING, AWSCURRENT never moves and LastRotatedDate is untouched, which is
   what a failed rotation leaves behind in AWS. RotateImmediately=false only changes the schedule.
   A second rotation while another version is AWSPENDING is refused, as AWS refuses it.
5. DescribeSecret and ListSecretVersionIds by the ARN of another account's secret are answered
   from that account, if the secret's resource policy allows the caller's account the action,
   and refused with AccessDeniedException otherwise (moto looked the ARN up in the caller's own
   account and answered ResourceNotFoundException).
6. AssumeRole on a role that exists is refused (AccessDenied) unless its trust policy allows the
   caller's account (a principal of that account, or "*") and, when the policy asks for
   sts:ExternalId, the caller passed that external ID: what AWS checks before handing out a
   target account's credentials. A role ARN that names no existing role is still assumed, as
   moto does (tests that only need credentials in another account create no role).
7. A task started by RunTask or StartTask carries createdAt and startedAt (moto leaves both
   out): ecs-reloader judges a standalone task by when it started, as AWS reports it. Its
   containers' cpu and memory are strings, as ECS's API spells them (moto answered numbers,
   which the AWS SDK for Rust refuses to parse).

Everything else is moto as released. Usage: python3 moto_launcher.py PORT
"""

import functools
import json
import sys
import time
import uuid

from moto.core.exceptions import JsonRESTError
from moto.secretsmanager import models as sm
from moto.secretsmanager import responses as sm_responses
from moto.secretsmanager.exceptions import InvalidRequestException


def _patch_list_versions():
    original = sm.SecretsManagerBackend.list_secret_version_ids

    @functools.wraps(original)
    def list_secret_version_ids(self, secret_id, *args, **kwargs):
        answer = json.loads(original(self, secret_id, *args, **kwargs))
        secret = self.secrets[secret_id]
        for entry in answer.get("Versions", []):
            stored = secret.versions.get(entry["VersionId"], {})
            if "createdate" in stored:
                entry["CreatedDate"] = stored["createdate"]
        return json.dumps(answer)

    sm.SecretsManagerBackend.list_secret_version_ids = list_secret_version_ids


def _patch_stage_moves():
    original = sm.SecretsManagerBackend.update_secret_version_stage

    @functools.wraps(original)
    def update_secret_version_stage(
        self, secret_id, version_stage, remove_from_version_id=None, move_to_version_id=None
    ):
        result = original(
            self, secret_id, version_stage, remove_from_version_id, move_to_version_id
        )
        secret = self.secrets[secret_id]
        secret.last_changed_date = int(time.time())
        if version_stage == "AWSCURRENT" and move_to_version_id:
            secret.default_version_id = move_to_version_id
        return result

    sm.SecretsManagerBackend.update_secret_version_stage = update_secret_version_stage


def _patch_label_keeping():
    def reset_default_version(self, secret_version, version_id):
        for old in self.versions.values():
            if "AWSPREVIOUS" in old["version_stages"]:
                old["version_stages"].remove("AWSPREVIOUS")
        current = next(
            (v for v, d in self.versions.items() if "AWSCURRENT" in d["version_stages"]),
            self.default_version_id,
        )
        if current:
            old = self.versions[current]["version_stages"]
            kept = [s for s in old if s != "AWSCURRENT"]
            self.versions[current]["version_stages"] = kept + ["AWSPREVIOUS"]
        self.versions[version_id] = secret_version
        self.default_version_id = version_id

    sm.FakeSecret.reset_default_version = reset_default_version


def _patch_rotation():
    original = sm.SecretsManagerBackend.rotate_secret

    @functools.wraps(original)
    def rotate_secret(
        self,
        secret_id,
        client_request_token=None,
        rotation_lambda_arn=None,
        rotation_rules=None,
        rotate_immediately=True,
    ):
        secret = self.secrets[secret_id] if self._is_valid_identifier(secret_id) else None
        lambda_arn = rotation_lambda_arn or getattr(secret, "rotation_lambda_arn", None)
        if (
            secret is None
            or not lambda_arn
            or isinstance(secret, sm.ReplicaSecret)
            or secret.is_deleted()
        ):
            return original(
                self,
                secret_id,
                client_request_token,
                rotation_lambda_arn,
                rotation_rules,
                rotate_immediately,
            )
        now = int(time.time())
        secret.rotation_requested = True
        secret.rotation_lambda_arn = lambda_arn
        days = (rotation_rules or {}).get("AutomaticallyAfterDays")
        if days:
            secret.auto_rotate_after_days = days
            secret.rotation_enabled = True
            secret.next_rotation_date = now + int(days) * 86400
        secret.last_changed_date = now
        if not rotate_immediately:
            return secret.to_short_dict()
        pending = next(
            (
                v
                for v, d in secret.versions.items()
                if "AWSPENDING" in d["version_stages"] and "AWSCURRENT" not in d["version_stages"]
            ),
            None,
        )
        token = client_request_token or pending or str(uuid.uuid4())
        if pending is not None and pending != token:
            raise InvalidRequestException(
                "A previous rotation isn't complete. That rotation will be reattempted."
            )
        if pending is None:
            # createSecret: the new value, staged AWSPENDING.
            self.put_secret_value(
                secret_id, f"rotated-{uuid.uuid4()}", None, token, ["AWSPENDING"]
            )
        if lambda_arn.rsplit(":", 1)[-1].endswith("-failing"):
            # setSecret or testSecret failed: nothing more happens.
            return secret.to_short_dict(version_id=token)
        # finishSecret: AWSCURRENT moves to the new version; the rotation has succeeded.
        current = next(
            v for v, d in secret.versions.items() if "AWSCURRENT" in d["version_stages"]
        )
        self.update_secret_version_stage(secret_id, "AWSCURRENT", current, token)
        secret.versions[token]["version_stages"].remove("AWSPENDING")
        secret.last_rotation_date = int(time.time())
        return secret.to_short_dict(version_id=token)

    sm.SecretsManagerBackend.rotate_secret = rotate_secret


def _policy_allows(policy, account, action):
    if not policy:
        return False
    doc = json.loads(policy) if isinstance(policy, str) else policy
    statements = doc.get("Statement", [])
    if isinstance(statements, dict):
        statements = [statements]
    for st in statements:
        if st.get("Effect") != "Allow":
            continue
        principal = st.get("Principal", {})
        principals = principal.get("AWS", []) if isinstance(principal, dict) else principal
        if isinstance(principals, str):
            principals = [principals]
        actions = st.get("Action", [])
        if isinstance(actions, str):
            actions = [actions]
        who = any(p == "*" or p == account or f":{account}:" in p for p in principals)
        what = any(a in ("*", "secretsmanager:*", f"secretsmanager:{action}") for a in actions)
        if who and what:
            return True
    return False


def _patch_cross_account():
    def backend(self):
        own = sm.secretsmanager_backends[self.current_account][self.region]
        action = self.headers.get("X-Amz-Target", "").rsplit(".", 1)[-1]
        if action not in ("DescribeSecret", "ListSecretVersionIds"):
            return own
        secret_id = self._get_param("SecretId") or ""
        parts = secret_id.split(":")
        if len(parts) < 7 or parts[0] != "arn" or parts[4] in ("", self.current_account):
            return own
        owner = sm.secretsmanager_backends[parts[4]][parts[3]]
        secret = owner.secrets[secret_id] if owner._is_valid_identifier(secret_id) else None
        if secret is None or not _policy_allows(secret.policy, self.current_account, action):
            raise JsonRESTError(
                "AccessDeniedException",
                f"User: arn:aws:sts::{self.current_account}:assumed-role/caller is not authorized"
                f" to perform: secretsmanager:{action} on resource: {secret_id} because no"
                f" resource-based policy allows the secretsmanager:{action} action",
            )
        return owner

    sm_responses.SecretsManagerResponse.backend = property(backend)


def _trusts(document, caller_account, external_id):
    doc = json.loads(document) if isinstance(document, str) else document
    statements = doc.get("Statement", [])
    if isinstance(statements, dict):
        statements = [statements]
    for st in statements:
        actions = st.get("Action", [])
        actions = [actions] if isinstance(actions, str) else actions
        if st.get("Effect") != "Allow" or not any(a in ("sts:AssumeRole", "sts:*", "*") for a in actions):
            continue
        principal = st.get("Principal", {})
        principals = principal.get("AWS", []) if isinstance(principal, dict) else principal
        principals = [principals] if isinstance(principals, str) else principals
        if not any(p == "*" or p == caller_account or f":{caller_account}:" in p for p in principals):
            continue
        wanted = st.get("Condition", {}).get("StringEquals", {}).get("sts:ExternalId")
        if wanted is None or external_id in ([wanted] if isinstance(wanted, str) else wanted):
            return True
    return False


def _patch_assume_role():
    from moto.iam.models import iam_backends
    from moto.sts import models as sts
    from moto.sts.exceptions import STSClientError

    original = sts.STSBackend.assume_role

    @functools.wraps(original)
    def assume_role(self, region_name, role_session_name, role_arn, policy, duration, external_id):
        parts = role_arn.split(":")
        if len(parts) == 6 and parts[5].startswith("role/"):
            account, name = parts[4], parts[5].rsplit("/", 1)[-1]
            iam = iam_backends[account][self.partition]
            role = next((r for r in iam.roles.values() if r.name == name), None)
            if role is not None and not _trusts(role.assume_role_policy_document, self.account_id, external_id):
                raise STSClientError(
                    "AccessDenied",
                    f"User: arn:aws:sts::{self.account_id}:assumed-role/caller is not authorized"
                    f" to perform: sts:AssumeRole on resource: {role_arn}",
                )
        return original(self, region_name, role_session_name, role_arn, policy, duration, external_id)

    sts.STSBackend.assume_role = assume_role


def _patch_task_dates():
    from moto.ecs import models as ecs_models

    original = ecs_models.Task.__init__

    @functools.wraps(original)
    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        now = time.time()
        self.created_at = now
        self.started_at = now

    ecs_models.Task.__init__ = init

    container_init = ecs_models.Container.__init__

    @functools.wraps(container_init)
    def container(self, *args, **kwargs):
        container_init(self, *args, **kwargs)
        self.cpu = None if self.cpu is None else str(self.cpu)
        self.memory = None if self.memory is None else str(self.memory)

    ecs_models.Container.__init__ = container


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: moto_launcher.py PORT")
    _patch_list_versions()
    _patch_stage_moves()
    _patch_label_keeping()
    _patch_rotation()
    _patch_cross_account()
    _patch_assume_role()
    _patch_task_dates()
    from moto.server import main as serve

    serve(["-H", "127.0.0.1", "-p", sys.argv[1]])


if __name__ == "__main__":
    main()
