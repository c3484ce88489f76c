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
from policy import condition_holds, decide, render

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
# The same seven on the forwarding bus, for member accounts' events.
MEMBER_RULES = ["Members" + r for r in CHANGE_RULES]
# And the members' S3 environment-file events, which their own rules filter by bucket.
MEMBER_S3_RULE = "MembersEnvironmentFileRule"
ACCOUNT = "123456789012"
# The ECS condition keys of ecs:UpdateService (Service Authorization Reference) that a request
# sets: each must have its own Deny, and ecs-reloader's request sets none of them.
UPDATE_SERVICE_KEYS = [
    "ecs:auto-assign-public-ip",
    "ecs:capacity-provider",
    "ecs:enable-ebs-volumes",
    "ecs:enable-ecs-managed-tags",
    "ecs:enable-execute-command",
    "ecs:enable-service-connect",
    "ecs:enable-vpc-lattice",
    "ecs:namespace",
    "ecs:propagate-tags",
    "ecs:subnet",
    "ecs:task-cpu",
    "ecs:task-definition",
    "ecs:task-memory",
]
VALUE_READS = ["secretsmanager:GetSecretValue", "ssm:GetParameter", "ssm:GetParameters", "ssm:GetParametersByPath", "kms:Decrypt",
               "s3:GetObject", "s3:GetObjectVersion"]
# What would read an image's content (its manifest, its layers): denied; ecr:DescribeImages
# (digests and tags, for image drift) is all the operator reads of ECR.
IMAGE_READS = ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"]
# Every CodeDeploy action the operator may be granted (CodeDeployApplications not empty).
CODEDEPLOY_ACTIONS = [
    "codedeploy:CreateDeployment",
    "codedeploy:GetApplicationRevision",
    "codedeploy:GetDeployment",
    "codedeploy:GetDeploymentConfig",
    "codedeploy:GetDeploymentGroup",
    "codedeploy:ListApplications",
    "codedeploy:ListDeploymentGroups",
    "codedeploy:ListDeployments",
    "codedeploy:RegisterApplicationRevision",
]


def refs(account=ACCOUNT, **params):
    """Parameter and pseudo-parameter values for policy.render."""
    base = {"AWS::AccountId": account, "AWS::Region": "us-east-1", "AWS::Partition": "aws", "AWS::StackName": "reloader",
            "ManagedClusters": ["prod", "staging"], "MemberAccounts": [""], "OrganizationId": "", "MemberRoleName": "",
            "LabelledParameterNames": [""], "CodeDeployApplications": [""], "RoleRegion": "us-east-1",
            "EnvironmentFileBuckets": [""]}
    base.update(params)
    return base


def conditions(r, mode="ecs"):
    """Both templates' conditions, as CloudFormation decides them for these refs (a
    CommaDelimitedList is empty when its elements join to "")."""
    members = "".join(r["MemberAccounts"]) != ""
    org = r["OrganizationId"] != ""
    codedeploy = "".join(r["CodeDeployApplications"]) != ""
    creates_role = r["AWS::Region"] == r["RoleRegion"]
    return {"IsEcs": mode == "ecs", "IsLambda": mode == "lambda", "HasMemberAccounts": members, "HasOrganization": org,
            "HasMembers": members or org, "HasMemberRole": r["MemberRoleName"] != "",
            "HasLabelledParameters": "".join(r["LabelledParameterNames"]) != "", "HasCodeDeployApplications": codedeploy,
            # The member template's.
            "CreatesRole": creates_role, "CreatesCodeDeployPolicy": creates_role and codedeploy,
            "HasEnvironmentFileBuckets": "".join(r["EnvironmentFileBuckets"]) != "",
            "CreatesEnvironmentFilePolicy": creates_role and "".join(r["EnvironmentFileBuckets"]) != ""}


def role_statements(template, role, r, conds):
    """Every statement a role of the template holds for these refs and conditions: its managed
    policies, its inline ones, and each AWS::IAM::Policy naming it whose Condition holds."""
    res = template["Resources"]
    if "Condition" in res[role] and not conds[res[role]["Condition"]]:
        return []
    r = {**{name: name for name in res}, **r}  # a Ref to a resource: its logical id
    props = res[role]["Properties"]
    statements = []
    for arn in render(props.get("ManagedPolicyArns", []), r, conds):
        statements += render(_statements(template, arn), r, conds)
    for p in render(props.get("Policies", []), r, conds):
        statements += p["PolicyDocument"]["Statement"]
    for name, resource in res.items():
        if resource["Type"] != "AWS::IAM::Policy" or ("Condition" in resource and not conds[resource["Condition"]]):
            continue
        policy = render(resource["Properties"], r, conds)
        if role in policy["Roles"]:
            statements += policy["PolicyDocument"]["Statement"]
    return statements


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
    allow, others, tls = policy["PolicyDocument"]["Statement"]
    assert allow["Effect"] == "Allow"
    assert allow["Principal"] == {"Service": "events.amazonaws.com"}
    assert allow["Action"] == "sqs:SendMessage"
    sources = allow["Condition"]["ArnEquals"]["aws:SourceArn"]
    assert sources[:7] == [{"Fn::GetAtt": [r, "Arn"]} for r in CHANGE_RULES]
    assert sources[7:14] == [{"Fn::If": ["HasMembers", {"Fn::GetAtt": [r, "Arn"]}, {"Ref": "AWS::NoValue"}]} for r in MEMBER_RULES]
    assert sources[14:] == [{"Fn::If": ["HasEnvironmentFileBuckets", {"Fn::GetAtt": ["EnvironmentFileRule", "Arn"]}, {"Ref": "AWS::NoValue"}]},
                            {"Fn::If": ["HasMembers", {"Fn::GetAtt": [MEMBER_S3_RULE, "Arn"]}, {"Ref": "AWS::NoValue"}]}]
    for rule in CHANGE_RULES + MEMBER_RULES + ["EnvironmentFileRule", MEMBER_S3_RULE]:
        targets = template["Resources"][rule]["Properties"]["Targets"]
        assert targets == [{"Id": "queue", "Arn": {"Fn::GetAtt": ["ChangeQueue", "Arn"]}}]
    # Nobody else may send, whatever an identity policy grants; the operator's role may.
    assert (others["Effect"], others["Principal"], others["Action"]) == ("Deny", "*", "sqs:SendMessage")
    assert others["Condition"]["ArnNotEquals"]["aws:SourceArn"] == sources
    assert others["Condition"]["ArnNotEquals"]["aws:PrincipalArn"] == {"Fn::If": ["IsEcs", {"Fn::GetAtt": ["TaskRole", "Arn"]}, {"Fn::GetAtt": ["FunctionRole", "Arn"]}]}
    assert (tls["Effect"], tls["Principal"], tls["Action"]) == ("Deny", "*", "sqs:*")
    assert tls["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    dlq = template["Resources"]["DeadLetterQueuePolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert [(s["Effect"], s["Action"], s["Condition"]) for s in dlq] == [("Deny", "sqs:*", tls["Condition"])]


@pytest.mark.parametrize("mode", ["ecs", "lambda"])
@pytest.mark.parametrize("members", [False, True])
def test_the_queue_policy_decides_as_meant(template, mode, members):
    # With members, environment-file buckets too: their rule may send, and without them it may not.
    r = refs(MemberAccounts=["111111111111"] if members else [""], EnvironmentFileBuckets=["conf"] if members else [""])
    doc = render(template["Resources"]["ChangeQueuePolicy"]["Properties"]["PolicyDocument"], r, conditions(r, mode))
    statements = doc["Statement"]
    queue, role = "ChangeQueue.Arn", "TaskRole.Arn" if mode == "ecs" else "FunctionRole.Arn"
    if not members:
        ctx = {"aws:SourceArn": "EnvironmentFileRule.Arn", "aws:SecureTransport": "true"}
        assert decide(statements, "sqs:SendMessage", queue, ctx) == "Deny", "no buckets, no environment-file rule"
    rules = CHANGE_RULES + (MEMBER_RULES + ["EnvironmentFileRule", MEMBER_S3_RULE] if members else [])
    for rule in rules:  # EventBridge, for one of the rules: no aws:PrincipalArn (a service principal)
        ctx = {"aws:SourceArn": f"{rule}.Arn", "aws:SecureTransport": "true"}
        assert decide(statements, "sqs:SendMessage", queue, ctx) == "Allow", rule
    # The operator's role: the queue policy says nothing (its own policy allows it), and no Deny.
    operator = {"aws:PrincipalArn": role, "aws:SecureTransport": "true"}
    assert decide(statements, "sqs:SendMessage", queue, operator) == "ImplicitDeny"
    for who in [{"aws:PrincipalArn": "arn:aws:iam::123456789012:role/other"},  # any other role of the account
                {"aws:SourceArn": "arn:aws:events:us-east-1:123456789012:rule/someone-elses"},
                {"aws:SourceArn": "MembersRotationSucceededRule.Arn"} if not members else {"aws:PrincipalArn": "x"},
                {"aws:SourceArn": f"{MEMBER_S3_RULE}.Arn"} if not members else {"aws:PrincipalArn": "y"}]:
        assert decide(statements, "sqs:SendMessage", queue, {**who, "aws:SecureTransport": "true"}) == "Deny", who
    assert decide(statements, "sqs:ReceiveMessage", queue, {**operator, "aws:SecureTransport": "false"}) == "Deny"


def _actions(statement):
    a = statement["Action"]
    return a if isinstance(a, list) else [a]


def _statements(template, policy):
    return template["Resources"][policy]["Properties"]["PolicyDocument"]["Statement"]


def test_the_operator_can_never_read_a_secret_value(template):
    statements = _statements(template, "OperatorPolicy")
    actions = [a for s in statements for a in _actions(s)]
    for forbidden in VALUE_READS + ["ssm:GetParameterHistory"]:
        assert forbidden not in actions
    assert not [a for a in actions if a.endswith(":*") or a == "*"], actions
    assert all(s["Effect"] == "Allow" for s in statements)
    [update] = [s for s in statements if "ecs:UpdateService" in _actions(s)]
    assert _actions(update) == ["ecs:UpdateService"]
    assert update["Resource"] != "*", "UpdateService only on the managed clusters' services"
    assert update["Condition"]["StringEquals"]["aws:RequestedRegion"] == {"Ref": "AWS::Region"}
    # And an explicit Deny, which no Allow (nor the aws/ssm key's policy) overrides.
    guardrails = _statements(template, "OperatorGuardrails")
    [deny] = [s for s in guardrails if s["Sid"] == "NeverReadAValue"]
    assert (deny["Effect"], sorted(_actions(deny)), deny["Resource"], deny.get("Condition")) == ("Deny", sorted(VALUE_READS), "*", None)
    for action in VALUE_READS:
        assert decide(guardrails, action, "arn:aws:ssm:us-east-1:123456789012:parameter/app/db", {}) == "Deny"
    for role in ["TaskRole", "FunctionRole"]:
        props = template["Resources"][role]["Properties"]
        assert props["ManagedPolicyArns"] == [{"Ref": "OperatorPolicy"}, {"Ref": "OperatorGuardrails"}]


def check_update_service_only_forces(statements, allowed_resource):
    """Each request key of ecs:UpdateService has a Deny of its own that holds only when the request
    sets it; ecs-reloader's request (cluster, service, forceNewDeployment: no such key) is allowed."""
    denies = [s for s in statements if s["Effect"] == "Deny" and _actions(s) == ["ecs:UpdateService"]]
    assert sorted(k for s in denies for k in s["Condition"]["Null"]) == sorted(UPDATE_SERVICE_KEYS)
    for s in denies:
        assert s["Resource"] == "*" and list(s["Condition"]) == ["Null"] and len(s["Condition"]["Null"]) == 1, s
        assert list(s["Condition"]["Null"].values()) == ["false"], "denied when the request sets the key"
    ours = {"aws:RequestedRegion": "us-east-1"}
    assert decide(statements, "ecs:UpdateService", allowed_resource, ours) == "Allow"
    for key in UPDATE_SERVICE_KEYS:
        assert decide(statements, "ecs:UpdateService", allowed_resource, {**ours, key: "x"}) == "Deny", key


def test_update_service_may_only_force_a_new_deployment(template):
    r = refs()
    statements = render(_statements(template, "OperatorPolicy") + _statements(template, "OperatorGuardrails"), r, conditions(r))
    service = "arn:aws:ecs:us-east-1:123456789012:service/prod/api"
    check_update_service_only_forces(statements, service)
    other = "arn:aws:ecs:us-east-1:123456789012:service/other/api"
    assert decide(statements, "ecs:UpdateService", other, {"aws:RequestedRegion": "us-east-1"}) == "ImplicitDeny"


def check_ecs_reads_scoped(statements):
    """Every ECS read that supports it is scoped to the managed clusters (prod, staging)."""
    account_wide = sorted(a for s in statements if s["Effect"] == "Allow" and s["Resource"] == "*" and "Condition" not in s
                          for a in _actions(s) if a.startswith("ecs:"))
    assert account_wide == ["ecs:DescribeTaskDefinition", "ecs:ListClusters"], "no resource, no ecs:cluster key"
    for action, inside, outside in [
        ("ecs:ListServices", ("*", {"ecs:cluster": "arn:aws:ecs:us-east-1:1:cluster/prod"}), ("*", {"ecs:cluster": "arn:aws:ecs:us-east-1:1:cluster/other"})),
        ("ecs:ListTasks", ("*", {"ecs:cluster": "arn:aws:ecs:us-east-1:1:cluster/staging"}), ("*", {"ecs:cluster": "arn:aws:ecs:us-east-1:1:cluster/prod-2"})),
        ("ecs:DescribeServices", ("arn:aws:ecs:us-east-1:1:service/prod/api", {}), ("arn:aws:ecs:us-east-1:1:service/other/api", {})),
        ("ecs:ListTagsForResource", ("arn:aws:ecs:us-east-1:1:service/staging/api", {}), ("arn:aws:ecs:us-east-1:1:cluster/prod", {})),
        ("ecs:DescribeTasks", ("arn:aws:ecs:us-east-1:1:task/prod/abc", {}), ("arn:aws:ecs:us-east-1:1:task/other/abc", {})),
    ]:
        assert decide(statements, action, inside[0], inside[1]) == "Allow", action
        assert decide(statements, action, outside[0], outside[1]) == "ImplicitDeny", action
        assert decide(statements, action, "*", {}) == "ImplicitDeny", f"{action} without a cluster"


def check_service_deployments_read_only_in_managed_clusters(statements):
    """BLUE_GREEN, LINEAR and CANARY rollouts are watched through service deployments: listed on
    the service, described on the service and the service deployment (the Service Authorization
    Reference's resource types), inside the managed clusters (prod, staging) only."""
    inside = [("arn:aws:ecs:us-east-1:1:service/prod/api", ["ecs:ListServiceDeployments", "ecs:DescribeServiceDeployments"]),
              ("arn:aws:ecs:eu-west-1:1:service-deployment/staging/api/Ab12", ["ecs:DescribeServiceDeployments"])]
    for resource, actions in inside:
        for action in actions:
            assert decide(statements, action, resource, {}) == "Allow", (action, resource)
    for resource in ["arn:aws:ecs:us-east-1:1:service/other/api", "arn:aws:ecs:us-east-1:1:service/prod-2/api",
                     "arn:aws:ecs:us-east-1:1:service-deployment/other/api/Ab12", "arn:aws:ecs:us-east-1:1:service-deployment/prod-2/api/Ab12",
                     "arn:aws:ecs:us-east-1:1:cluster/prod", "*"]:
        for action in ["ecs:ListServiceDeployments", "ecs:DescribeServiceDeployments"]:
            assert decide(statements, action, resource, {}) == "ImplicitDeny", (action, resource)
    granted = [s for s in statements if s["Effect"] == "Allow" and any("ServiceDeployment" in a for a in _actions(s))]
    assert sorted(a for s in granted for a in _actions(s)) == ["ecs:DescribeServiceDeployments", "ecs:ListServiceDeployments"]


def test_ecs_reads_only_the_managed_clusters(template):
    r = refs()
    statements = render(_statements(template, "OperatorPolicy"), r, conditions(r))
    check_ecs_reads_scoped(statements)
    check_service_deployments_read_only_in_managed_clusters(statements)


def check_image_metadata_only(statements):
    """ecr:DescribeImages (digests and tags, for image drift) on any repository; an image's
    content (manifest, layers) explicitly denied, whatever else grants it."""
    repos = ["arn:aws:ecr:us-east-1:123456789012:repository/app", "arn:aws:ecr:eu-west-1:999999999999:repository/team/api"]
    for repo in repos:
        assert decide(statements, "ecr:DescribeImages", repo, {}) == "Allow", repo
        greedy = statements + [{"Effect": "Allow", "Action": "ecr:*", "Resource": "*"}]
        for action in IMAGE_READS:
            assert decide(greedy, action, repo, {}) == "Deny", (action, repo)
    allowed = sorted({a for s in statements if s["Effect"] == "Allow" for a in _actions(s) if a.startswith("ecr:")})
    assert allowed == ["ecr:DescribeImages"], allowed
    [deny] = [s for s in statements if s.get("Sid") == "NeverReadAnImage"]
    assert (deny["Effect"], sorted(_actions(deny)), deny["Resource"], deny.get("Condition")) == ("Deny", IMAGE_READS, "*", None)


@pytest.mark.parametrize("mode", ["ecs", "lambda"])
def test_ecr_gives_the_operator_digests_and_tags_only(template, mode):
    r = refs()
    role = "TaskRole" if mode == "ecs" else "FunctionRole"
    check_image_metadata_only(role_statements(template, role, r, conditions(r, mode)))


def check_codedeploy_only_named_applications(statements, pinned_region=None):
    """With CodeDeployApplications = orders, billing: the CodeDeploy actions (and no others) on
    those applications and their deployment groups only; ListApplications names no resource,
    GetDeploymentConfig any configuration. With pinned_region, the writes only in that region."""
    app = "arn:aws:codedeploy:us-east-1:123456789012:application:"
    group = "arn:aws:codedeploy:us-east-1:123456789012:deploymentgroup:"
    here = {"aws:RequestedRegion": pinned_region or "us-east-1"}
    allowed = sorted({a for s in statements if s["Effect"] == "Allow" for a in _actions(s) if a.startswith("codedeploy:")})
    assert allowed == CODEDEPLOY_ACTIONS, allowed
    assert decide(statements, "codedeploy:ListApplications", "*", here) == "Allow"
    assert decide(statements, "codedeploy:GetDeploymentConfig", "arn:aws:codedeploy:us-east-1:123456789012:deploymentconfig:CodeDeployDefault.ECSAllAtOnce", here) == "Allow"
    for name in ["orders", "billing"]:
        for action in ["codedeploy:ListDeploymentGroups", "codedeploy:RegisterApplicationRevision", "codedeploy:GetApplicationRevision"]:
            assert decide(statements, action, app + name, here) == "Allow", (action, name)
        for action in ["codedeploy:GetDeploymentGroup", "codedeploy:GetDeployment", "codedeploy:ListDeployments", "codedeploy:CreateDeployment"]:
            assert decide(statements, action, f"{group}{name}/{name}-blue-green", here) == "Allow", (action, name)
    for other in ["payments", "orders-2", "order"]:
        for action in ["codedeploy:ListDeploymentGroups", "codedeploy:RegisterApplicationRevision", "codedeploy:GetApplicationRevision"]:
            assert decide(statements, action, app + other, here) == "ImplicitDeny", (action, other)
        for action in ["codedeploy:GetDeploymentGroup", "codedeploy:GetDeployment", "codedeploy:ListDeployments", "codedeploy:CreateDeployment"]:
            assert decide(statements, action, f"{group}{other}/dg", here) == "ImplicitDeny", (action, other)
    # Group-level actions never on an application, application-level ones never on a group.
    assert decide(statements, "codedeploy:CreateDeployment", app + "orders", here) == "ImplicitDeny"
    assert decide(statements, "codedeploy:RegisterApplicationRevision", group + "orders/dg", here) == "ImplicitDeny"
    if pinned_region:
        elsewhere = {"aws:RequestedRegion": "ap-south-1"}
        assert decide(statements, "codedeploy:CreateDeployment", group + "orders/dg", elsewhere) == "ImplicitDeny"
        assert decide(statements, "codedeploy:RegisterApplicationRevision", app + "orders", elsewhere) == "ImplicitDeny"


def check_no_codedeploy(statements):
    assert not [s for s in statements if any(a.startswith("codedeploy:") for a in _actions(s))], "no CodeDeploy action at all"
    for action in CODEDEPLOY_ACTIONS:
        assert decide(statements, action, "arn:aws:codedeploy:us-east-1:123456789012:deploymentgroup:orders/dg", {"aws:RequestedRegion": "us-east-1"}) == "ImplicitDeny"
        assert decide(statements, action, "*", {"aws:RequestedRegion": "us-east-1"}) == "ImplicitDeny"


@pytest.mark.parametrize("mode", ["ecs", "lambda"])
def test_codedeploy_only_on_the_named_applications_and_none_by_default(template, mode):
    role = "TaskRole" if mode == "ecs" else "FunctionRole"
    r = refs()
    check_no_codedeploy(role_statements(template, role, r, conditions(r, mode)))
    r = refs(CodeDeployApplications=["orders", "billing"])
    check_codedeploy_only_named_applications(role_statements(template, role, r, conditions(r, mode)), pinned_region="us-east-1")
    # Only the policy that carries the condition grants CodeDeploy, and it refuses wildcards.
    for name, resource in template["Resources"].items():
        doc = resource.get("Properties", {}).get("PolicyDocument")
        if doc and "codedeploy:" in json.dumps(doc):
            assert (name, resource.get("Condition")) == ("CodeDeployRolloutPolicy", "HasCodeDeployApplications")
    assert template["Parameters"]["CodeDeployApplications"]["Default"] == ""


def _env(template, mode):
    if mode == "ecs":
        [container] = template["Resources"]["TaskDefinition"]["Properties"]["ContainerDefinitions"]
        return {e["Name"]: e["Value"] for e in container["Environment"]}
    return template["Resources"]["Function"]["Properties"]["Environment"]["Variables"]


@pytest.mark.parametrize("mode", ["ecs", "lambda"])
def test_codedeploy_rollouts_are_on_exactly_when_granted(template, mode):
    for apps, expected in [([""], "false"), (["orders"], "true"), (["orders", "billing"], "true")]:
        r = refs(CodeDeployApplications=apps)
        assert render(_env(template, mode)["ECS_RELOADER_ROLLOUT_CODEDEPLOY"], r, conditions(r, mode)) == expected, apps
    # The variable names the key the binary reads ([rollout] codedeploy).
    assert "pub codedeploy: bool" in (ROOT / "src/config.rs").read_text()


def test_the_operator_puts_only_its_own_outcome_events(template):
    [put] = [s for s in _statements(template, "OperatorPolicy") if "events:PutEvents" in _actions(s)]
    bus = "arn:aws:events:us-east-1:123456789012:event-bus/default"
    statements = render([put], refs())
    assert decide(statements, "events:PutEvents", bus, {"events:source": ["ecs-reloader"]}) == "Allow"
    for sources in [["aws.secretsmanager"], ["ecs-reloader", "aws.ssm"], ["my.app"]]:
        assert decide(statements, "events:PutEvents", bus, {"events:source": sources}) == "ImplicitDeny", sources
    assert decide(statements, "events:PutEvents", bus, {}) == "ImplicitDeny", "no vacuous ForAllValues"
    # The source the binary publishes with (src/aws/queue.rs).
    assert 'EVENT_SOURCE: &str = "ecs-reloader"' in (ROOT / "src/aws/queue.rs").read_text()


def test_trust_policies_name_this_account(template):
    res = template["Resources"]
    [task] = res["TaskRole"]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert task["Condition"]["StringEquals"] == {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}
    assert task["Condition"]["ArnLike"] == {"aws:SourceArn": {"Fn::Sub": "arn:${AWS::Partition}:ecs:${AWS::Region}:${AWS::AccountId}:*"}}
    [fn] = res["FunctionRole"]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert fn["Condition"] == {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}
    perm = res["ResyncPermission"]["Properties"]
    assert perm["SourceAccount"] == {"Ref": "AWS::AccountId"} and perm["SourceArn"] == {"Fn::GetAtt": ["ResyncRule", "Arn"]}
    r = refs()
    assert decide(render([task], r), "sts:AssumeRole", "*", {"aws:SourceAccount": ACCOUNT, "aws:SourceArn": f"arn:aws:ecs:us-east-1:{ACCOUNT}:task/ops/1"}) == "Allow"
    assert decide(render([task], r), "sts:AssumeRole", "*", {"aws:SourceAccount": "999999999999", "aws:SourceArn": "arn:aws:ecs:us-east-1:999999999999:task/x/1"}) == "ImplicitDeny"
    assert decide(render([fn], r), "sts:AssumeRole", "*", {"aws:SourceAccount": "999999999999"}) == "ImplicitDeny"


def test_parameters_refuse_a_bare_wildcard(template):
    import re

    buckets = template["Parameters"]["EnvironmentFileBuckets"]["AllowedPattern"]
    for ok in ["", "conf", "team.env-files", "a1b"]:
        assert re.fullmatch(buckets, ok), ok
    for bad in ["*", "conf*", "conf/app.env", "arn:aws:s3:::conf", "Conf"]:
        assert not re.fullmatch(buckets, bad), bad

    clusters = template["Parameters"]["ManagedClusters"]["AllowedPattern"]
    labelled = template["Parameters"]["LabelledParameterNames"]["AllowedPattern"]
    for ok in ["prod", "staging-2", "a_b"]:
        assert re.fullmatch(clusters, ok), ok
    for bad in ["*", "prod*", "", "arn:aws:ecs:us-east-1:1:cluster/prod", "a/b"]:
        assert not re.fullmatch(clusters, bad), bad
    for ok in ["", "app/db", "app/*", "team/a/*", "flat"]:
        assert re.fullmatch(labelled, ok), ok
    for bad in ["*", "/*", "app*", "*/db", "app/*/x", "/app/db"]:
        assert not re.fullmatch(labelled, bad), bad
    codedeploy = template["Parameters"]["CodeDeployApplications"]["AllowedPattern"]
    for ok in ["", "orders", "Orders.api_v2", "a+b=c@d-e"]:
        assert re.fullmatch(codedeploy, ok), ok
    for bad in ["*", "orders*", "ord?rs", "orders/blue", "arn:aws:codedeploy:us-east-1:1:application:orders", "x" * 101]:
        assert not re.fullmatch(codedeploy, bad), bad


def _event(name, **overrides):
    e = json.loads((EVENTS / name).read_text())
    # TestEventPattern wants the whole envelope; some deliveries lack `account`.
    e.setdefault("account", "123456789012")
    e.update(overrides)
    return e


def _matching_rules(template, event, rules=CHANGE_RULES, **params):
    # The emulator's TestEventPattern is a stub, so use its matcher directly: the same code that
    # routes PutEvents to a rule's targets in the emulator (which tests/serve_emulator.rs uses).
    # The stack is the event's account's unless `params` say otherwise.
    r = refs(**{"account": event["account"], **params})
    hits = []
    for rule in rules:
        pattern = render(template["Resources"][rule]["Properties"]["EventPattern"], r, conditions(r))
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


def test_default_bus_rules_match_only_this_accounts_events(template):
    event = _event("rotation_succeeded.json", account="210987654321")
    assert _matching_rules(template, event, account=ACCOUNT) == [], "another account's event on the default bus"
    assert _matching_rules(template, event, account="210987654321") == ["RotationSucceededRule"]


def test_forwarding_bus_rules_match_only_the_member_accounts(template):
    for rule, own in zip(MEMBER_RULES, CHANGE_RULES):
        m, c = template["Resources"][rule], template["Resources"][own]["Properties"]
        assert m["Condition"] == "HasMembers"
        assert m["Properties"]["EventBusName"] == {"Fn::GetAtt": ["MemberEventBus", "Name"]}
        assert m["Properties"]["EventPattern"]["account"] == {"Fn::If": ["HasMemberAccounts", {"Ref": "MemberAccounts"}, {"Ref": "AWS::NoValue"}]}
        assert {k: v for k, v in m["Properties"]["EventPattern"].items() if k != "account"} == {k: v for k, v in c["EventPattern"].items() if k != "account"}
    listed = ["111111111111", "222222222222"]
    for account, expected in [("111111111111", ["MembersRotationSucceededRule"]), ("222222222222", ["MembersRotationSucceededRule"]), ("333333333333", [])]:
        event = _event("rotation_succeeded.json", account=account)
        assert _matching_rules(template, event, MEMBER_RULES, account=ACCOUNT, MemberAccounts=listed) == expected, account
    # The organisation alone: its bus policy is the boundary, the patterns match any account.
    event = _event("rotation_succeeded.json", account="333333333333")
    assert _matching_rules(template, event, MEMBER_RULES, account=ACCOUNT, OrganizationId="o-exampleorgid") == ["MembersRotationSucceededRule"]


def test_the_forwarding_bus_takes_the_members_environment_file_events(template):
    # The members' S3 object events, whichever bucket: each member's own rule forwards only its
    # EnvironmentFileBuckets' (test_organisation.py), which the central template cannot know.
    m = template["Resources"][MEMBER_S3_RULE]
    assert m["Condition"] == "HasMembers"
    assert m["Properties"]["EventBusName"] == {"Fn::GetAtt": ["MemberEventBus", "Name"]}
    assert m["Properties"]["EventPattern"]["account"] == {"Fn::If": ["HasMemberAccounts", {"Ref": "MemberAccounts"}, {"Ref": "AWS::NoValue"}]}
    own = template["Resources"]["EnvironmentFileRule"]["Properties"]["EventPattern"]
    assert {k: v for k, v in m["Properties"]["EventPattern"].items() if k != "account"} == {k: v for k, v in own.items() if k not in ("account", "detail")}
    rules = MEMBER_RULES + [MEMBER_S3_RULE]
    listed = ["111111111111", "222222222222"]
    for kind in ["Object Created", "Object Deleted"]:
        event = _s3_event(kind, bucket="member-conf", account="111111111111")
        assert _matching_rules(template, event, rules, account=ACCOUNT, MemberAccounts=listed) == [MEMBER_S3_RULE], kind
    assert _matching_rules(template, _s3_event(account="333333333333"), rules, account=ACCOUNT, MemberAccounts=listed) == [], "not a listed account"
    assert _matching_rules(template, _s3_event("Object Restore Completed", account="111111111111"), rules, account=ACCOUNT, MemberAccounts=listed) == []
    assert _matching_rules(template, _s3_event(account="333333333333"), rules, account=ACCOUNT, OrganizationId="o-exampleorgid") == [MEMBER_S3_RULE]


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
    guard = iam.get_policy(PolicyArn=outputs["OperatorGuardrailsArn"])["Policy"]
    document = iam.get_policy_version(PolicyArn=guard["Arn"], VersionId=guard["DefaultVersionId"])["PolicyVersion"]["Document"]
    document = json.loads(document) if isinstance(document, str) else document
    [deny] = [s for s in document["Statement"] if s["Sid"] == "NeverReadAValue"]
    assert deny["Effect"] == "Deny" and sorted(deny["Action"]) == sorted(VALUE_READS)
    [deny] = [s for s in document["Statement"] if s["Sid"] == "NeverReadAnImage"]
    assert deny["Effect"] == "Deny" and sorted(deny["Action"]) == IMAGE_READS
    # (The emulator's CloudFormation does not attach a role's ManagedPolicyArns, so that both
    # roles carry both policies is checked on the template: test_the_operator_can_never_read_...)
    assert "EventBusArn" not in outputs and "MemberEventBus" not in resources, "no forwarding bus without members"
    assert "EnvironmentFileRule" not in resources and "EnvironmentFileListingPolicy" not in resources, "no S3 access without buckets"


def _check_dashboard(aws, outputs, mode):
    """The dashboard's body, once CloudFormation has put it together, is one JSON document whose
    queue panels name this stack's queues; in Mode=lambda it adds the function's own panels, in
    Mode=ecs a note that `serve`'s metrics are on /metrics. (That each ecs-reloader metric is
    one the code emits: src/metrics.rs, dashboards_use_only_metrics_the_code_emits.)"""
    body = aws("cloudwatch").get_dashboard(DashboardName=outputs["DashboardName"])["DashboardBody"]
    assert "${" not in body, body
    widgets = json.loads(body)["widgets"]
    sqs = aws("sqs")
    queues = {sqs.get_queue_attributes(QueueUrl=u, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"].split(":")[-1]
              for u in [outputs["QueueUrl"], sqs.get_queue_url(QueueName=outputs["DeadLetterQueueArn"].split(":")[-1])["QueueUrl"]]}
    metrics = [m for w in widgets if w["type"] == "metric" for m in w["properties"]["metrics"]]
    assert {m[3] for m in metrics if m[0] == "AWS/SQS"} == queues
    namespaces = {m[0] if isinstance(m[0], str) else "search" for m in metrics}
    [text] = [w["properties"]["markdown"] for w in widgets if w["type"] == "text"]
    if mode == "lambda":
        assert namespaces == {"AWS/SQS", "ecs-reloader", "AWS/Lambda", "search"}, namespaces
        assert "Mode=lambda" in text
    else:
        assert namespaces == {"AWS/SQS"}, "serve writes no embedded metrics: no empty panels"
        assert "Mode=ecs" in text and "/metrics" in text
    for w in widgets:  # the 24-column grid, no overlaps
        assert w["x"] + w["width"] <= 24
    cells = [(w["x"] + i, w["y"] + j) for w in widgets for i in range(w["width"]) for j in range(w["height"])]
    assert len(cells) == len(set(cells)), "widgets overlap"


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
    assert env["ECS_RELOADER_ROLLOUT_CODEDEPLOY"] == "false", "no CodeDeployApplications: CODE_DEPLOY services are reported"
    assert container["readonlyRootFilesystem"] is True
    attrs = aws("sqs").get_queue_attributes(QueueUrl=outputs["QueueUrl"], AttributeNames=["VisibilityTimeout"])["Attributes"]
    assert int(attrs["VisibilityTimeout"]) == 300, "serve extends visibility itself; a crash must not hide events long"
    _check_no_parameter_history(aws, [resources["TaskRole"]])
    _check_no_codedeploy(aws, [resources["TaskRole"]])
    _check_dashboard(aws, outputs, "ecs")


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
    assert fn["Environment"]["Variables"]["ECS_RELOADER_ROLLOUT_CODEDEPLOY"] == "false"
    _check_no_parameter_history(aws, [resources["FunctionRole"]])
    _check_no_codedeploy(aws, [resources["FunctionRole"]])
    _check_dashboard(aws, outputs, "lambda")


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


def _check_no_codedeploy(aws, roles):
    for role in roles:
        granted = [s for s in _role_statements(aws, role) if any(a.startswith("codedeploy:") for a in _actions(s))]
        assert granted == [], f"{role}: no CodeDeployApplications, no CodeDeploy action: {granted}"


def test_codedeploy_is_granted_only_on_the_named_applications_in_the_emulator(aws):
    aws("ecs").create_cluster(clusterName="ops")
    resources, _ = _deploy(
        aws,
        "reloader-codedeploy",
        {
            "Mode": "ecs",
            "ManagedClusters": "prod,staging",
            "ImageUri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/ecs-reloader:1",
            "OperatorCluster": "ops",
            "Subnets": "subnet-0123456789abcdef0",
            "SecurityGroups": "sg-0123456789abcdef0",
            "CodeDeployApplications": "orders,billing",
        },
    )
    statements = [s for s in _role_statements(aws, resources["TaskRole"]) if any(a.startswith("codedeploy:") for a in _actions(s))]
    check_codedeploy_only_named_applications(statements, pinned_region="us-east-1")
    td = aws("ecs").describe_task_definition(taskDefinition=resources["TaskDefinition"])["taskDefinition"]
    env = {e["name"]: e["value"] for e in td["containerDefinitions"][0]["environment"]}
    assert env["ECS_RELOADER_ROLLOUT_CODEDEPLOY"] == "true"


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


def _s3_event(kind="Object Created", bucket="conf", account=ACCOUNT):
    """An S3 EventBridge event as AWS documents it (the bucket's EventBridge notifications on)."""
    return {
        "version": "0", "id": "17793124-05d4-b198-2fde-7ededc63b103", "detail-type": kind, "source": "aws.s3",
        "account": account, "time": "2026-12-07T12:00:03Z", "region": "us-east-1", "resources": [f"arn:aws:s3:::{bucket}"],
        "detail": {"version": "0", "bucket": {"name": bucket}, "object": {"key": "app/prod.env", "size": 12, "etag": "b1946ac92492d2347c6235b4d2611184"},
                   "request-id": "N4N7GDK58NMKJ12R", "requester": account, "reason": "PutObject"},
    }


def test_environment_file_events_of_the_named_buckets_only(template):
    rules = CHANGE_RULES + ["EnvironmentFileRule"]
    named = {"EnvironmentFileBuckets": ["conf", "team-env"]}
    for kind in ["Object Created", "Object Deleted"]:
        assert _matching_rules(template, _s3_event(kind), rules, **named) == ["EnvironmentFileRule"], kind
    assert _matching_rules(template, _s3_event(bucket="team-env"), rules, **named) == ["EnvironmentFileRule"]
    assert _matching_rules(template, _s3_event(bucket="other"), rules, **named) == [], "a bucket not named"
    assert _matching_rules(template, _s3_event("Object Restore Completed"), rules, **named) == []
    assert _matching_rules(template, _s3_event(account="210987654321"), rules, account=ACCOUNT, **named) == [], "another account's bucket event"
    assert template["Resources"]["EnvironmentFileRule"]["Condition"] == "HasEnvironmentFileBuckets"


def test_environment_files_are_listed_never_read(template):
    r = refs(EnvironmentFileBuckets=["conf", "team-env"])
    listing = template["Resources"]["EnvironmentFileListingPolicy"]
    assert listing["Condition"] == "HasEnvironmentFileBuckets"
    statements = render(listing["Properties"]["PolicyDocument"]["Statement"] + _statements(template, "OperatorGuardrails")
                        + _statements(template, "OperatorPolicy"), r, conditions(r))
    assert [_actions(s) for s in render(listing["Properties"]["PolicyDocument"]["Statement"], r)] == [["s3:ListBucket"]]
    for bucket in ["conf", "team-env"]:
        assert decide(statements, "s3:ListBucket", f"arn:aws:s3:::{bucket}", {}) == "Allow", bucket
    assert decide(statements, "s3:ListBucket", "arn:aws:s3:::other", {}) == "ImplicitDeny"
    for read in ["s3:GetObject", "s3:GetObjectVersion"]:
        assert decide(statements, read, "arn:aws:s3:::conf/app/prod.env", {}) == "Deny", read


def test_environment_file_buckets_deploy_a_rule_and_a_listing_grant(aws):
    aws("ecs").create_cluster(clusterName="ops")
    resources, outputs = _deploy(
        aws,
        "reloader-env-files",
        {
            "Mode": "ecs",
            "ManagedClusters": "prod",
            "ImageUri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/ecs-reloader:1",
            "OperatorCluster": "ops",
            "Subnets": "subnet-0123456789abcdef0",
            "SecurityGroups": "sg-0123456789abcdef0",
            "EnvironmentFileBuckets": "conf,team-env",
        },
    )
    granted = [s for s in _role_statements(aws, resources["TaskRole"]) if "s3:ListBucket" in _actions(s)]
    assert [(_actions(s), s["Resource"]) for s in granted] == [(["s3:ListBucket"], ["arn:*:s3:::conf", "arn:*:s3:::team-env"])]
    targets = aws("events").list_targets_by_rule(Rule=resources["EnvironmentFileRule"])["Targets"]
    assert [t["Arn"] for t in targets] == [outputs["QueueArn"]]


def test_scheduled_tasks_are_read_in_this_account_and_region_only(template):
    r = refs()
    statements = render(_statements(template, "OperatorPolicy") + _statements(template, "OperatorGuardrails"), r, conditions(r))
    rule = "arn:aws:events:us-east-1:123456789012:rule/nightly"
    for action in ["events:ListRules", "events:ListTargetsByRule"]:
        assert decide(statements, action, rule, {}) == "Allow", action
        assert decide(statements, action, "arn:aws:events:eu-west-1:123456789012:rule/nightly", {}) == "ImplicitDeny"
    assert decide(statements, "scheduler:ListSchedules", "*", {}) == "Allow"
    assert decide(statements, "scheduler:GetSchedule", "arn:aws:scheduler:us-east-1:123456789012:schedule/default/hourly", {}) == "Allow"
    assert decide(statements, "scheduler:GetSchedule", "arn:aws:scheduler:us-east-1:210987654321:schedule/default/hourly", {}) == "ImplicitDeny"
    for write in ["events:PutRule", "events:PutTargets", "scheduler:UpdateSchedule", "scheduler:CreateSchedule", "ecs:StopTask", "ecs:RunTask"]:
        assert decide(statements, write, "*", {}) != "Allow", write
