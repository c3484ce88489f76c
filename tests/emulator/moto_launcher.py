"""Start moto_server on a loopback port with two fixes that make Secrets Manager's metadata as
truthful as the real service's (see ../shared/emulator-notes.md):

1. ListSecretVersionIds reports each version's stored creation date, not the current time.
2. UpdateSecretVersionStage updates the secret's LastChangedDate, as a stage move does in AWS.
3. PutSecretValue moves only AWSCURRENT (and AWSPREVIOUS): moto replaced every label of the old
   current version with AWSPREVIOUS, dropping custom labels such as "blue".

Everything else is moto as released. Usage: python3 moto_launcher.py PORT
"""

import functools
import json
import sys
import time

from moto.secretsmanager import models as sm


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
    def update_secret_version_stage(self, secret_id, *args, **kwargs):
        result = original(self, secret_id, *args, **kwargs)
        self.secrets[secret_id].last_changed_date = int(time.time())
        return result

    sm.SecretsManagerBackend.update_secret_version_stage = update_secret_version_stage


def _patch_label_keeping():
    def reset_default_version(self, secret_version, version_id):
        for old in self.versions.values():
            if "AWSPREVIOUS" in old["version_stages"]:
                old["version_stages"].remove("AWSPREVIOUS")
        if self.default_version_id:
            old = self.versions[self.default_version_id]["version_stages"]
            kept = [s for s in old if s != "AWSCURRENT"]
            self.versions[self.default_version_id]["version_stages"] = kept + ["AWSPREVIOUS"]
        self.versions[version_id] = secret_version
        self.default_version_id = version_id

    sm.FakeSecret.reset_default_version = reset_default_version


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: moto_launcher.py PORT")
    _patch_list_versions()
    _patch_stage_moves()
    _patch_label_keeping()
    from moto.server import main as serve

    serve(["-H", "127.0.0.1", "-p", sys.argv[1]])


if __name__ == "__main__":
    main()
