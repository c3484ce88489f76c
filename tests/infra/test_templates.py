"""infra/: the templates lint clean, pass the security scan (every exception justified), deploy
into the emulator's CloudFormation, grant least privilege, and their rules match real event
shapes and nothing else."""

import copy
import io
import json
import os
import subprocess
import zipfile

import pytest
from cfnlint.decode import cfn_yaml
from moto.events.models import EventPattern

from conftest import ROOT

TEMPLATE = ROOT / "infra/ecs-reloader.yaml"
EVENTS = ROOT / "tests/fixtures/events"
CHANGE_RULES = ["RotationSucceededRule", "SecretLabelUpdatedRule", "SecretApiCallRule", "ParameterStoreChangeRule"]


@pytest.fixture(scope="module")
def template():
    return cfn_yaml.load(str(TEMPLATE))


def test_cfn_lint_finds_nothing():
    out = subprocess.run(["cfn-lint", str(TEMPLATE)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_checkov_fails_no_check_and_every_skip_is_justified(template):
    out = subprocess.run(
        [os.environ.get("CHECKOV", "checkov"), "-f", str(TEMPLATE), "-o", "json", "--quiet", "--skip-download", "--compact"],
        capture_output=True,
        text=True,
    )
    report = json.loads(out.stdout)
    report = report if isinstance(report, dict) else report[0]
    failed = [(c["check_id"], c["resource"]) for c in report["results"].get("failed_checks", [])]
    assert failed == [], failed
    assert report["summary"]["failed"] == 0
    assert report["summary"]["passed"] > 10, "checkov ran too few checks"
    for name, res in template["Resources"].items():
        for skip in res.get("Metadata", {}).get("checkov", {}).get("skip", []):
            assert len(skip.get("comment", "")) > 20, f"{name}: skip {skip['id']} needs a reason"


def test_the_queue_accepts_only_the_change_rules(template):
    # The emulator skips AWS::SQS::QueuePolicy, so check it from the template itself.
    policy = template["Resources"]["ChangeQueuePolicy"]["Properties"]
    assert policy["Queues"] == [{"Ref": "ChangeQueue"}]
    [stmt] = policy["PolicyDocument"]["Statement"]
    assert stmt["Effect"] == "Allow"
    assert stmt["Principal"] == {"Service": "events.amazonaws.com"}
    assert stmt["Action"] == "sqs:SendMessage"
    sources = stmt["Condition"]["ArnEquals"]["aws:SourceArn"]
    assert sorted(s["Fn::GetAtt"][0] for s in sources) == sorted(CHANGE_RULES)
    for rule in CHANGE_RULES:
        targets = template["Resources"][rule]["Properties"]["Targets"]
        assert targets == [{"Id": "queue", "Arn": {"Fn::GetAtt": ["ChangeQueue", "Arn"]}}]


def _actions(statement):
    a = statement["Action"]
    return a if isinstance(a, list) else [a]


def test_the_operator_can_never_read_a_secret_value(template):
    statements = template["Resources"]["OperatorPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    actions = [a for s in statements for a in _actions(s)]
    for forbidden in ["secretsmanager:GetSecretValue", "kms:Decrypt", "ssm:GetParameter", "ssm:GetParameters"]:
        assert forbidden not in actions
    assert not [a for a in actions if a.endswith(":*") or a == "*"], actions
    assert all(s["Effect"] == "Allow" for s in statements)
    [update] = [s for s in statements if "ecs:UpdateService" in _actions(s)]
    assert _actions(update) == ["ecs:UpdateService"]
    assert update["Resource"] != "*", "UpdateService only on the managed clusters' services"
    assert update["Condition"]["StringEquals"]["aws:RequestedRegion"] == {"Ref": "AWS::Region"}
    for role in ["TaskRole", "FunctionRole"]:
        props = template["Resources"][role]["Properties"]
        assert props["ManagedPolicyArns"] == [{"Ref": "OperatorPolicy"}]


def _event(name, **overrides):
    e = json.loads((EVENTS / name).read_text())
    # TestEventPattern wants the whole envelope; some deliveries lack `account`.
    e.setdefault("account", "123456789012")
    e.update(overrides)
    return e


def _matching_rules(template, event):
    # The emulator's TestEventPattern is a stub, so use its matcher directly: the same code that
    # routes PutEvents to a rule's targets in the emulator (which tests/serve_emulator.rs uses).
    hits = []
    for rule in CHANGE_RULES:
        pattern = template["Resources"][rule]["Properties"]["EventPattern"]
        if EventPattern.load(json.dumps(pattern)).matches_event(event):
            hits.append(rule)
    return hits


@pytest.mark.parametrize(
    "fixture,expected",
    [
        ("rotation_succeeded.json", ["RotationSucceededRule"]),
        ("secret_label_updated.json", ["SecretLabelUpdatedRule"]),
        ("put_secret_value.json", ["SecretApiCallRule"]),
        ("update_secret_version_stage_aRN.json", ["SecretApiCallRule"]),
        ("update_secret_partial_arn.json", ["SecretApiCallRule"]),
        ("parameter_store_change.json", ["ParameterStoreChangeRule"]),
        ("put_secret_value_failed.json", []),
        ("scheduled.json", []),
    ],
)
def test_rules_match_real_event_shapes(template, fixture, expected):
    assert _matching_rules(template, _event(fixture)) == expected


def test_rules_ignore_unrelated_events(template):
    get_value = _event("put_secret_value.json")
    get_value["detail"]["eventName"] = "GetSecretValue"
    rotation_started = _event("rotation_succeeded.json")
    rotation_started["detail"]["eventName"] = "RotationStarted"
    deleted = _event("parameter_store_change.json")
    deleted["detail"]["operation"] = "Delete"
    s3 = _event("scheduled.json", source="aws.s3", **{"detail-type": "Object Created"})
    impostor = copy.deepcopy(_event("secret_label_updated.json"))
    impostor["source"] = "my.app"
    for e in [get_value, rotation_started, deleted, s3, impostor]:
        assert _matching_rules(template, e) == [], e


def _deploy(aws, name, params):
    cfn = aws("cloudformation")
    cfn.create_stack(
        StackName=name,
        TemplateBody=TEMPLATE.read_text(),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()],
        Capabilities=["CAPABILITY_IAM"],
    )
    stack = cfn.describe_stacks(StackName=name)["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
    resources = cfn.list_stack_resources(StackName=name)["StackResourceSummaries"]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    return {r["LogicalResourceId"]: r["PhysicalResourceId"] for r in resources}, outputs


def _check_events_queue_and_policy(aws, resources, outputs):
    sqs = aws("sqs")
    attrs = sqs.get_queue_attributes(QueueUrl=outputs["QueueUrl"], AttributeNames=["All"])["Attributes"]
    redrive = json.loads(attrs["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"] == outputs["DeadLetterQueueArn"]
    events = aws("events")
    for rule in CHANGE_RULES:
        targets = events.list_targets_by_rule(Rule=resources[rule])["Targets"]
        assert [t["Arn"] for t in targets] == [outputs["QueueArn"]], rule
    iam = aws("iam")
    policy = iam.get_policy(PolicyArn=outputs["OperatorPolicyArn"])["Policy"]
    document = iam.get_policy_version(PolicyArn=policy["Arn"], VersionId=policy["DefaultVersionId"])["PolicyVersion"]["Document"]
    if isinstance(document, str):
        document = json.loads(document)
    text = json.dumps(document)
    assert "GetSecretValue" not in text and "kms:Decrypt" not in text
    assert "service/prod/*" in text and "service/staging/*" in text, text


def test_deploys_into_the_emulator_as_a_fargate_service(aws):
    aws("ecs").create_cluster(clusterName="ops")
    resources, outputs = _deploy(
        aws,
        "reloader-ecs",
        {
            "Mode": "ecs",
            "ManagedClusters": "prod,staging",
            "ImageUri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/ecs-reloader:1",
            "OperatorCluster": "ops",
            "Subnets": "subnet-0123456789abcdef0",
            "SecurityGroups": "sg-0123456789abcdef0",
        },
    )
    _check_events_queue_and_policy(aws, resources, outputs)
    iam = aws("iam")
    for role in ["TaskRole", "ExecutionRole"]:
        assert iam.get_role(RoleName=resources[role])["Role"]["AssumeRolePolicyDocument"]
    assert "Function" not in resources
    td = aws("ecs").describe_task_definition(taskDefinition=resources["TaskDefinition"])["taskDefinition"]
    [container] = td["containerDefinitions"]
    assert container["command"][0] == "serve"
    assert container["healthCheck"]["command"][:3] == ["CMD", "/ecs-reloader", "healthcheck"]
    env = {e["name"]: e["value"] for e in container["environment"]}
    assert env["ECS_RELOADER_QUEUE_URL"] == outputs["QueueUrl"]
    assert env["ECS_RELOADER_SCOPE_CLUSTERS"] == "prod,staging"


def test_deploys_into_the_emulator_as_a_lambda_function(aws):
    s3 = aws("s3")
    s3.create_bucket(Bucket="reloader-code")
    package = io.BytesIO()
    with zipfile.ZipFile(package, "w") as z:
        z.writestr("bootstrap", "#!/bin/sh\n")
    s3.put_object(Bucket="reloader-code", Key="ecs-reloader.zip", Body=package.getvalue())
    resources, outputs = _deploy(
        aws,
        "reloader-lambda",
        {"Mode": "lambda", "ManagedClusters": "prod,staging", "CodeBucket": "reloader-code"},
    )
    _check_events_queue_and_policy(aws, resources, outputs)
    assert "Service" not in resources and "TaskRole" not in resources
    fn = aws("lambda").get_function(FunctionName=resources["Function"])["Configuration"]
    assert fn["Runtime"] == "provided.al2023" and fn["Handler"] == "bootstrap"
    mappings = aws("lambda").list_event_source_mappings(FunctionName=resources["Function"])["EventSourceMappings"]
    assert [m["EventSourceArn"] for m in mappings] == [outputs["QueueArn"]]
    assert mappings[0]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    rule = aws("events").describe_rule(Name=resources["ResyncRule"])
    assert rule["ScheduleExpression"] == "rate(5 minutes)"
