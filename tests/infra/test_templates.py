"""infra/: the templates lint clean, pass the security scan (every exception justified), deploy
into the emulator's CloudFormation, grant least privilege, and their rules match real event
shapes and nothing else."""

import ast
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
CHANGE_RULES = [
    "RotationSucceededRule",
    "SecretLabelUpdatedRule",
    "SecretApiCallRule",
    "ParameterStoreChangeRule",
    "ParameterLabelsRule",
    "EcsDeploymentRule",
    "EcsServiceApiCallRule",
]


@pytest.fixture(scope="module")
def template():
    return cfn_yaml.load(str(TEMPLATE))


def assert_cfn_lint_clean(path):
    out = subprocess.run(["cfn-lint", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def assert_checkov_clean(path, parsed):
    """checkov fails no check, runs enough of them, and every skip says why."""
    out = subprocess.run(
        [os.environ.get("CHECKOV", "checkov"), "-f", str(path), "-o", "json", "--quiet", "--skip-download", "--compact"],
        capture_output=True,
        text=True,
    )
    report = json.loads(out.stdout)
    report = report if isinstance(report, dict) else report[0]
    failed = [(c["check_id"], c["resource"]) for c in report["results"].get("failed_checks", [])]
    assert failed == [], failed
    assert report["summary"]["failed"] == 0
    assert report["summary"]["passed"] > 10, "checkov ran too few checks"
    for name, res in parsed["Resources"].items():
        for skip in res.get("Metadata", {}).get("checkov", {}).get("skip", []):
            assert len(skip.get("comment", "")) > 20, f"{name}: skip {skip['id']} needs a reason"


def test_cfn_lint_finds_nothing():
    assert_cfn_lint_clean(TEMPLATE)


def test_checkov_fails_no_check_and_every_skip_is_justified(template):
    assert_checkov_clean(TEMPLATE, template)


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
        ("label_parameter_version.json", ["ParameterLabelsRule"]),
        ("ecs_deployment_in_progress.json", ["EcsDeploymentRule"]),
        ("ecs_delete_service.json", ["EcsServiceApiCallRule"]),
        ("ecs_tag_resource.json", ["EcsServiceApiCallRule"]),
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
    completed = _event("ecs_deployment_in_progress.json")
    completed["detail"]["eventName"] = "SERVICE_DEPLOYMENT_COMPLETED"
    run_task = _event("ecs_delete_service.json")
    run_task["detail"]["eventName"] = "RunTask"
    failed_delete = _event("ecs_delete_service.json")
    failed_delete["detail"]["errorCode"] = "AccessDeniedException"
    for e in [get_value, rotation_started, deleted, s3, impostor, completed, run_task, failed_delete]:
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
    assert env["ECS_RELOADER_EVENTS_QUEUE_URL"] == outputs["QueueUrl"]
    assert env["ECS_RELOADER_SCOPE_CLUSTERS"] == "prod,staging"
    assert container["readonlyRootFilesystem"] is True
    attrs = aws("sqs").get_queue_attributes(QueueUrl=outputs["QueueUrl"], AttributeNames=["VisibilityTimeout"])["Attributes"]
    assert int(attrs["VisibilityTimeout"]) == 300, "serve extends visibility itself; a crash must not hide events long"
    _check_no_parameter_history(aws, [resources["TaskRole"]])


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
    # AWS's advice for SQS event sources: visibility timeout at least six times the function's.
    attrs = aws("sqs").get_queue_attributes(QueueUrl=outputs["QueueUrl"], AttributeNames=["VisibilityTimeout", "RedrivePolicy"])["Attributes"]
    assert int(attrs["VisibilityTimeout"]) >= 6 * fn["Timeout"], (attrs, fn["Timeout"])
    assert int(json.loads(attrs["RedrivePolicy"])["maxReceiveCount"]) >= 5
    assert fn["Architectures"] == ["x86_64"], "the default architecture never changes under an existing stack"
    _check_no_parameter_history(aws, [resources["FunctionRole"]])


def _role_statements(aws, role):
    iam = aws("iam")
    statements = []
    for name in iam.list_role_policies(RoleName=role)["PolicyNames"]:
        doc = iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
        statements += _document(doc)["Statement"]
    for attached in iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]:
        p = iam.get_policy(PolicyArn=attached["PolicyArn"])["Policy"]
        doc = iam.get_policy_version(PolicyArn=p["Arn"], VersionId=p["DefaultVersionId"])["PolicyVersion"]["Document"]
        statements += _document(doc)["Statement"]
    return statements


def _document(doc):
    # The emulator returns a CloudFormation-made inline policy as the repr of a dict.
    if isinstance(doc, dict):
        return doc
    try:
        return json.loads(doc)
    except json.JSONDecodeError:
        return ast.literal_eval(doc)


def _check_no_parameter_history(aws, roles):
    for role in roles:
        granted = [s for s in _role_statements(aws, role) if "ssm:GetParameterHistory" in _actions(s)]
        assert granted == [], f"{role}: GetParameterHistory returns values; by default it is granted on nothing: {granted}"


def test_parameter_history_is_granted_only_on_the_named_parameters(aws):
    aws("ecs").create_cluster(clusterName="ops")
    resources, _ = _deploy(
        aws,
        "reloader-labelled",
        {
            "Mode": "ecs",
            "ManagedClusters": "prod",
            "ImageUri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/ecs-reloader:1",
            "OperatorCluster": "ops",
            "Subnets": "subnet-0123456789abcdef0",
            "SecurityGroups": "sg-0123456789abcdef0",
            "LabelledParameterNames": "app/flags,team/*",
        },
    )
    granted = [s for s in _role_statements(aws, resources["TaskRole"]) if "ssm:GetParameterHistory" in _actions(s)]
    assert len(granted) == 1, granted
    [stmt] = granted
    assert _actions(stmt) == ["ssm:GetParameterHistory"]
    assert stmt["Resource"] == ["arn:*:ssm:*:*:parameter/app/flags", "arn:*:ssm:*:*:parameter/team/*"], stmt
    assert stmt["Condition"]["StringEquals"] == {"aws:ResourceAccount": "123456789012", "aws:RequestedRegion": "us-east-1"}


def test_two_operator_replicas_share_one_lease(template):
    # The emulator drops DeploymentConfiguration, so read it from the template.
    props = template["Resources"]["Service"]["Properties"]
    assert props["DesiredCount"] == 2
    env = {
        e["Name"]: e["Value"]
        for e in template["Resources"]["TaskDefinition"]["Properties"]["ContainerDefinitions"][0]["Environment"]
    }
    assert env["ECS_RELOADER_LEASE_TABLE"] == {"Ref": "LeaseTable"}, "two replicas need the lease"
    fn_env = template["Resources"]["Function"]["Properties"]["Environment"]["Variables"]
    assert fn_env["ECS_RELOADER_LEASE_TABLE"] == {"Ref": "LeaseTable"}, "concurrent invocations take turns"
    assert fn_env["ECS_RELOADER_EVENTS_QUEUE_URL"] == {"Ref": "ChangeQueue"}, "waiting changes are handed on"
    table = template["Resources"]["LeaseTable"]["Properties"]
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["KeySchema"] == [{"AttributeName": "lease", "KeyType": "HASH"}]
    statements = template["Resources"]["OperatorPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    [lease] = [s for s in statements if any(a.startswith("dynamodb:") for a in _actions(s))]
    assert sorted(_actions(lease)) == ["dynamodb:GetItem", "dynamodb:PutItem"]
    assert lease["Resource"] == {"Fn::GetAtt": ["LeaseTable", "Arn"]}, "only the lease table"
    [queue] = [s for s in statements if "sqs:SendMessage" in _actions(s)]
    assert queue["Resource"] == {"Fn::GetAtt": ["ChangeQueue", "Arn"]}, "only its own queue"


def test_the_event_source_can_never_be_throttled(template):
    fn = template["Resources"]["Function"]["Properties"]
    esm = template["Resources"]["QueueSource"]["Properties"]
    reserved, maximum = fn["ReservedConcurrentExecutions"], esm["ScalingConfig"]["MaximumConcurrency"]
    assert 2 <= maximum < reserved, "the queue's invocations stay below the reserved concurrency, one slot left for the resync"
    assert fn["Timeout"] <= 300, "a resync ends before the next one (every 5 minutes) starts"
    invoke = template["Resources"]["ResyncInvokeConfig"]["Properties"]
    assert invoke["FunctionName"] == {"Ref": "Function"} and invoke["MaximumRetryAttempts"] == 0
    assert template["Parameters"]["MaxReceiveCount"]["MinValue"] >= 5


def test_rollout_held_events_raise_the_alarm(template):
    pattern = template["Resources"]["RolloutProblemsRule"]["Properties"]["EventPattern"]
    for detail_type in ["Rollout Failed", "Rollout Halted", "Rollout Held"]:
        event = {"version": "0", "id": "1", "detail-type": detail_type, "source": "ecs-reloader", "account": "123456789012",
                 "time": "2026-11-24T00:00:00Z", "region": "us-east-1", "resources": [], "detail": {"service": "prod/api"}}
        assert EventPattern.load(json.dumps(pattern)).matches_event(event), detail_type
    ok = {"version": "0", "id": "1", "detail-type": "Rollout Succeeded", "source": "ecs-reloader", "account": "123456789012",
          "time": "2026-11-24T00:00:00Z", "region": "us-east-1", "resources": [], "detail": {}}
    assert not EventPattern.load(json.dumps(pattern)).matches_event(ok)


def test_the_architecture_reaches_the_function_and_the_task(template):
    assert template["Parameters"]["Architecture"]["AllowedValues"] == ["x86_64", "arm64"]
    assert template["Parameters"]["Architecture"]["Default"] == "x86_64"
    assert template["Resources"]["Function"]["Properties"]["Architectures"] == [{"Ref": "Architecture"}]
    platform = template["Resources"]["TaskDefinition"]["Properties"]["RuntimePlatform"]
    assert platform["CpuArchitecture"] == {"Fn::If": ["IsArm64", "ARM64", "X86_64"]}
