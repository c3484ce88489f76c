"""tests/emulator/moto_launcher.py, plus two fixes of moto 5.2.1:

- CloudFormation: an AWS::Lambda::Function's `Architectures` is dropped (every function reads
  back as x86_64), so the architecture a template renders could not be checked;
- EventBridge: an event a rule forwards to another account's bus arrives there with the
  receiving account as its `account`, where AWS keeps the account the event came from; the
  central template's forwarding-bus rules match on that field (MemberAccounts), so the
  organisation's end-to-end path could not be checked.

Usage: moto_cfn_launcher.py PORT"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "emulator"))

import moto_launcher  # noqa: E402
from moto.awslambda import models as awslambda  # noqa: E402


def _keep_architectures():
    original = awslambda.LambdaFunction.create_from_cloudformation_json.__func__

    @classmethod
    def create(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs):
        fn = original(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs)
        if "Architectures" in cloudformation_json["Properties"]:
            fn.architectures = cloudformation_json["Properties"]["Architectures"]
        return fn

    awslambda.LambdaFunction.create_from_cloudformation_json = create


def _keep_forwarded_account():
    """A rule's event-bus target puts the event on that bus with its original `account`."""
    import json

    from moto.events import models as events
    from moto.utilities.arns import parse_arn

    original = events.Rule.send_to_targets

    def send_to_targets(self, event, transform_input=True):
        buses = [t for t in self.targets if t["Arn"].startswith("arn:") and parse_arn(t["Arn"]).resource_type == "event-bus"]
        if not buses:
            return original(self, event, transform_input)
        others = [t for t in self.targets if t not in buses]
        self.targets, kept = others, self.targets
        try:
            original(self, event, transform_input)
        finally:
            self.targets = kept
        if not self.event_pattern.matches_event(event):
            return
        for t in buses:
            arn = parse_arn(t["Arn"])
            backend = events.events_backends[arn.account][arn.region]
            try:
                bus = backend.describe_event_bus(arn.resource_id)
            except Exception:
                continue  # no such bus: AWS counts a failed invocation and drops it
            for rule in bus.rules.values():
                forwarded = json.loads(json.dumps(event))
                rule.send_to_targets(forwarded)

    events.Rule.send_to_targets = send_to_targets


if __name__ == "__main__":
    _keep_architectures()
    _keep_forwarded_account()
    moto_launcher.main()
