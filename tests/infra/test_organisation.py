"""An organisation: infra/ecs-reloader-member.yaml in member accounts and the central template's
organisation parameters. Both lint clean and pass the security scan, grant least privilege, and
deploy into the emulator in two accounts (moto keeps one backend per account; credentials from
sts:AssumeRole on a role of another account act there), where the member role trusts only the
operator's role with the external ID, and a change event in a member account reaches the
central queue through the member's rule and the central rule."""

import json
import time

import boto3
import pytest
from cfnlint.decode import cfn_yaml
from moto.events.models import EventPattern

import conftest
from conftest import REGION, ROOT
from policy import decide, render
from test_templates import (
    CHANGE_RULES,
    EVENTS,
    MEMBER_RULES,
    MEMBER_S3_RULE,
    TEMPLATE,
    VALUE_READS,
    _actions,
    _event,
    _s3_event,
    assert_cfn_lint_clean,
    assert_checkov_clean,
    check_codedeploy_only_named_applications,
    check_ecs_reads_scoped,
    check_image_metadata_only,
    check_no_codedeploy,
    check_service_deployments_read_only_in_managed_clusters,
    check_update_service_only_forces,
    conditions,
    refs,
    role_statements,
)

MEMBER = ROOT / "infra/ecs-reloader-member.yaml"
OPERATOR_ACCOUNT = "123456789012"
MEMBERS = ["111111111111", "222222222222"]
OUTSIDER = "333333333333"
EXTERNAL_ID = "org-example-1"


@pytest.fixture(scope="module")
def member():
    return cfn_yaml.load(str(MEMBER))


@pytest.fixture(scope="module")
def central():
    return cfn_yaml.load(str(TEMPLATE))


def test_cfn_lint_finds_nothing_in_the_member_template():
    assert_cfn_lint_clean(MEMBER)


def test_checkov_fails_no_check_of_the_member_template(member):
    assert_checkov_clean(MEMBER, member)


def test_members_forward_exactly_the_central_change_events(member, central):
    for rule in CHANGE_RULES:
        m, c = member["Resources"][rule]["Properties"], central["Resources"][rule]["Properties"]
        assert m["EventPattern"] == c["EventPattern"], rule
        [target] = m["Targets"]
        assert target["Arn"] == {"Ref": "CentralEventBusArn"}
        assert target["RoleArn"] == {"Fn::GetAtt": ["ForwarderRole", "Arn"]}
    forwarder = member["Resources"]["ForwarderRole"]["Properties"]
    [stmt] = forwarder["Policies"][0]["PolicyDocument"]["Statement"]
    assert _actions(stmt) == ["events:PutEvents"] and stmt["Resource"] == {"Ref": "CentralEventBusArn"}
    # The same matcher the emulator routes with: real event shapes match, a failed call does not.
    for fixture, expected in [("rotation_succeeded.json", ["RotationSucceededRule"]), ("put_secret_value_failed.json", [])]:
        event = _event(fixture)
        hits = [r for r in CHANGE_RULES if EventPattern.load(json.dumps(member["Resources"][r]["Properties"]["EventPattern"])).matches_event(event)]
        assert hits == expected, fixture


def test_the_target_role_trusts_only_the_operator_with_the_external_id_and_reads_no_value(member):
    role = member["Resources"]["TargetRole"]
    assert role["Condition"] == "CreatesRole"
    [trust] = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"AWS": {"Ref": "OperatorRoleArn"}}
    assert _actions(trust) == ["sts:AssumeRole"]
    assert trust["Condition"] == {"StringEquals": {"sts:ExternalId": {"Ref": "ExternalId"}}}
    statements = [s for p in role["Properties"]["Policies"] for s in p["PolicyDocument"]["Statement"]]
    allowed = [a for s in statements if s["Effect"] == "Allow" for a in _actions(s)]
    for forbidden in VALUE_READS + ["ssm:GetParameterHistory"]:
        assert forbidden not in allowed
    assert not [a for a in allowed if a.endswith(":*") or a == "*"], allowed
    [update] = [s for s in statements if s["Effect"] == "Allow" and "ecs:UpdateService" in _actions(s)]
    assert _actions(update) == ["ecs:UpdateService"] and update["Resource"] != "*"
    # The same Denies as the operator's own roles: no value, and UpdateService only forces.
    [deny] = [s for s in statements if s.get("Sid") == "NeverReadAValue"]
    assert (deny["Effect"], sorted(_actions(deny)), deny["Resource"]) == ("Deny", sorted(VALUE_READS), "*")
    rendered = render(statements, refs(account=MEMBERS[0]))
    for action in VALUE_READS:
        assert decide(rendered, action, f"arn:aws:secretsmanager:us-east-1:{MEMBERS[0]}:secret:app/db-AbCdEf", {}) == "Deny"
    check_update_service_only_forces(rendered, f"arn:aws:ecs:eu-west-1:{MEMBERS[0]}:service/staging/api")
    check_ecs_reads_scoped(rendered)
    check_service_deployments_read_only_in_managed_clusters(rendered)
    check_image_metadata_only(rendered)
    assert member["Parameters"]["ManagedClusters"]["AllowedPattern"] == "^[A-Za-z0-9_-]{1,255}$", "no bare *"
    # The forwarder: only EventBridge acting for this account, only this account's events.
    [trust] = member["Resources"]["ForwarderRole"]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Condition"] == {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}
    for rule in CHANGE_RULES:
        assert member["Resources"][rule]["Properties"]["EventPattern"]["account"] == [{"Ref": "AWS::AccountId"}]


def test_the_target_role_deploys_only_the_named_codedeploy_applications(member, central):
    # The same parameter as the central template's, and the policy only where the role is.
    same = ["Type", "Default", "AllowedPattern"]
    assert {k: member["Parameters"]["CodeDeployApplications"][k] for k in same} == {k: central["Parameters"]["CodeDeployApplications"][k] for k in same}
    policy = member["Resources"]["TargetCodeDeployPolicy"]
    assert policy["Condition"] == "CreatesCodeDeployPolicy" and policy["Properties"]["Roles"] == [{"Ref": "TargetRole"}]
    assert member["Conditions"]["CreatesCodeDeployPolicy"] == {"Fn::And": [
        member["Conditions"]["CreatesRole"],
        {"Fn::Not": [{"Fn::Equals": [{"Fn::Join": ["", {"Ref": "CodeDeployApplications"}]}, ""]}]}]}
    for name, resource in member["Resources"].items():
        if name != "TargetCodeDeployPolicy":
            assert "codedeploy:" not in json.dumps(resource), name
    r = refs(account=MEMBERS[0])
    check_no_codedeploy(role_statements(member, "TargetRole", r, conditions(r)))
    r = refs(account=MEMBERS[0], CodeDeployApplications=["orders", "billing"])
    statements = role_statements(member, "TargetRole", r, conditions(r))
    check_codedeploy_only_named_applications(statements)
    check_image_metadata_only(statements)
    # Another region's stack instance: no role, no policy.
    r = refs(account=MEMBERS[0], CodeDeployApplications=["orders"], RoleRegion="eu-west-1")
    assert not conditions(r)["CreatesCodeDeployPolicy"] and role_statements(member, "TargetRole", r, conditions(r)) == []


def test_the_target_role_lists_only_the_named_environment_file_buckets(member, central):
    # The same parameter as the central template's (bucket names, no wildcard, none by default).
    same = ["Type", "Default", "AllowedPattern"]
    assert {k: member["Parameters"]["EnvironmentFileBuckets"][k] for k in same} == {k: central["Parameters"]["EnvironmentFileBuckets"][k] for k in same}
    assert member["Parameters"]["EnvironmentFileBuckets"]["Default"] == ""
    policy = member["Resources"]["TargetEnvironmentFilePolicy"]
    assert policy["Condition"] == "CreatesEnvironmentFilePolicy" and policy["Properties"]["Roles"] == [{"Ref": "TargetRole"}]
    assert member["Conditions"]["CreatesEnvironmentFilePolicy"] == {"Fn::And": [
        member["Conditions"]["CreatesRole"],
        {"Fn::Not": [{"Fn::Equals": [{"Fn::Join": ["", {"Ref": "EnvironmentFileBuckets"}]}, ""]}]}]}
    # Only that policy grants anything of S3 (the role's own Deny names the object reads).
    for name, resource in member["Resources"].items():
        doc = resource.get("Properties", {}).get("PolicyDocument") or resource.get("Properties", {}).get("Policies")
        if doc and name != "TargetEnvironmentFilePolicy":
            statements = [s for p in (doc if isinstance(doc, list) else [{"PolicyDocument": doc}]) for s in p["PolicyDocument"]["Statement"]]
            assert not [s for s in statements if s["Effect"] == "Allow" and any(a.startswith("s3:") for a in _actions(s))], name
    objects = ["arn:aws:s3:::conf/app/prod.env", "arn:aws:s3:::team-env/a b.env", "arn:aws:s3:::other/x.env"]

    def check(statements, listable):
        for bucket in ["conf", "team-env", "other", "conf-2", "con"]:
            expected = "Allow" if bucket in listable else "ImplicitDeny"
            assert decide(statements, "s3:ListBucket", f"arn:aws:s3:::{bucket}", {}) == expected, bucket
        assert decide(statements, "s3:ListBucket", "*", {}) == "ImplicitDeny"
        # Even with a grant from elsewhere, an object's content is never read.
        greedy = statements + [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]
        for read in ["s3:GetObject", "s3:GetObjectVersion"]:
            for obj in objects:
                assert decide(greedy, read, obj, {}) == "Deny", (read, obj)
        allowed = sorted({a for s in statements if s["Effect"] == "Allow" for a in _actions(s) if a.startswith("s3:")})
        assert allowed == (["s3:ListBucket"] if listable else []), allowed

    r = refs(account=MEMBERS[0])
    check(role_statements(member, "TargetRole", r, conditions(r)), [])
    r = refs(account=MEMBERS[0], EnvironmentFileBuckets=["conf", "team-env"])
    statements = role_statements(member, "TargetRole", r, conditions(r))
    check(statements, ["conf", "team-env"])
    [listing] = [s for s in statements if s.get("Sid") == "ListEnvironmentFileBuckets"]
    assert listing["Resource"] == ["arn:*:s3:::conf", "arn:*:s3:::team-env"]
    # The role's other reads are unchanged by the buckets.
    check_ecs_reads_scoped(statements)
    check_image_metadata_only(statements)
    # Another region's stack instance: no role, no policy.
    r = refs(account=MEMBERS[0], EnvironmentFileBuckets=["conf"], RoleRegion="eu-west-1")
    assert not conditions(r)["CreatesEnvironmentFilePolicy"] and role_statements(member, "TargetRole", r, conditions(r)) == []


def test_the_target_role_reads_scheduled_tasks_of_its_own_account_only(member, central):
    r = refs(account=MEMBERS[0])
    statements = role_statements(member, "TargetRole", r, conditions(r))
    # Its own account's rules and schedules, in RoleRegion and in every other region the
    # operator's [[targets]] entry names (the role is global: one for all of them).
    for region in ["us-east-1", "eu-west-1"]:
        for action in ["events:ListRules", "events:ListTargetsByRule"]:
            assert decide(statements, action, f"arn:aws:events:{region}:{MEMBERS[0]}:rule/nightly", {}) == "Allow", (action, region)
            assert decide(statements, action, f"arn:aws:events:{region}:{MEMBERS[0]}:rule/custom-bus/nightly", {}) == "Allow", (action, region)
        assert decide(statements, "scheduler:GetSchedule", f"arn:aws:scheduler:{region}:{MEMBERS[0]}:schedule/default/hourly", {}) == "Allow", region
    assert decide(statements, "scheduler:ListSchedules", "*", {}) == "Allow", "ListSchedules supports no resource"
    # Never another account's (a rule or schedule of the operator's, another member's).
    for other in [OPERATOR_ACCOUNT, MEMBERS[1]]:
        for action in ["events:ListRules", "events:ListTargetsByRule"]:
            assert decide(statements, action, f"arn:aws:events:us-east-1:{other}:rule/nightly", {}) == "ImplicitDeny", (action, other)
        assert decide(statements, "scheduler:GetSchedule", f"arn:aws:scheduler:us-east-1:{other}:schedule/default/hourly", {}) == "ImplicitDeny", other
    for action in ["events:ListRules", "events:ListTargetsByRule", "scheduler:GetSchedule"]:
        assert decide(statements, action, "*", {}) == "ImplicitDeny", action
    # Read-only: exactly the central operator's four actions, and no way to change or run a task.
    granted = sorted({a for s in statements if s["Effect"] == "Allow" for a in _actions(s) if a.split(":")[0] in ("events", "scheduler")})
    operator = sorted({a for s in central["Resources"]["OperatorPolicy"]["Properties"]["PolicyDocument"]["Statement"]
                       if s["Effect"] == "Allow" and s.get("Sid") in ("ReadScheduledTaskRules", "ListSchedules", "ReadSchedules") for a in _actions(s)})
    assert granted == operator == ["events:ListRules", "events:ListTargetsByRule", "scheduler:GetSchedule", "scheduler:ListSchedules"], granted
    for write in ["events:PutRule", "events:PutTargets", "events:DeleteRule", "events:DescribeRule", "scheduler:UpdateSchedule",
                  "scheduler:CreateSchedule", "scheduler:DeleteSchedule", "ecs:RunTask", "ecs:StopTask"]:
        assert decide(statements, write, "*", {}) != "Allow", write
        assert decide(statements, write, f"arn:aws:events:us-east-1:{MEMBERS[0]}:rule/nightly", {}) != "Allow", write


def test_members_forward_the_named_buckets_environment_file_events_only(member, central):
    rule = member["Resources"]["EnvironmentFileRule"]
    assert rule["Condition"] == "HasEnvironmentFileBuckets", "no buckets, no S3 forwarding"
    props = rule["Properties"]
    # The central template's own pattern, and the same target as the other forwarding rules.
    assert props["EventPattern"] == central["Resources"]["EnvironmentFileRule"]["Properties"]["EventPattern"]
    assert props["EventBusName"] == "default"
    assert props["Targets"] == [{"Id": "central", "Arn": {"Ref": "CentralEventBusArn"}, "RoleArn": {"Fn::GetAtt": ["ForwarderRole", "Arn"]}}]
    r = refs(account=MEMBERS[0], EnvironmentFileBuckets=["conf", "team-env"])
    assert conditions(r)["HasEnvironmentFileBuckets"]
    assert not conditions(refs(account=MEMBERS[0]))["HasEnvironmentFileBuckets"]
    # In every region's instance, not only RoleRegion's (S3 sends a bucket's events in its region).
    assert conditions(refs(account=MEMBERS[0], EnvironmentFileBuckets=["conf"], RoleRegion="eu-west-1"))["HasEnvironmentFileBuckets"]
    rules = CHANGE_RULES + ["EnvironmentFileRule"]

    def hits(event):
        return [n for n in rules if EventPattern.load(json.dumps(render(member["Resources"][n]["Properties"]["EventPattern"], r, conditions(r)))).matches_event(event)]

    for kind in ["Object Created", "Object Deleted"]:
        for bucket in ["conf", "team-env"]:
            assert hits(_s3_event(kind, bucket=bucket, account=MEMBERS[0])) == ["EnvironmentFileRule"], (kind, bucket)
    for bucket in ["other", "conf-2", "team"]:
        assert hits(_s3_event(bucket=bucket, account=MEMBERS[0])) == [], bucket
    assert hits(_s3_event("Object Restore Completed", account=MEMBERS[0])) == []
    assert hits(_s3_event("Object Tags Added", account=MEMBERS[0])) == []
    assert hits(_s3_event(account=MEMBERS[1])) == [], "never relay another account's event"
    impostor = _s3_event(account=MEMBERS[0])
    impostor["source"] = "my.app"
    assert hits(impostor) == []


def test_the_central_bus_accepts_only_the_organisation_or_listed_accounts(central):
    res = central["Resources"]
    bus = res["MemberEventBus"]
    assert bus["Condition"] == "HasMembers" and bus["Properties"]["Name"] == {"Fn::Sub": "${AWS::StackName}-members"}
    sources = {"ForAllValues:StringEquals": {"events:source": ["aws.secretsmanager", "aws.ssm", "aws.ecs", "aws.s3"]}, "Null": {"events:source": "false"}}
    org = res["OrganizationEventsPolicy"]
    assert org["Condition"] == "HasOrganization"
    assert org["Properties"]["EventBusName"] == {"Fn::GetAtt": ["MemberEventBus", "Name"]}, "the forwarding bus, not the default one"
    stmt = org["Properties"]["Statement"]
    assert stmt["Principal"] == "*" and stmt["Action"] == "events:PutEvents"
    assert stmt["Resource"] == {"Fn::GetAtt": ["MemberEventBus", "Arn"]}
    assert stmt["Condition"] == {"StringEquals": {"aws:PrincipalOrgID": {"Ref": "OrganizationId"}}, **sources}, "anyone else is refused"
    listed = res["MemberAccountsEventsPolicy"]
    assert listed["Condition"] == "HasMemberAccounts"
    assert listed["Properties"]["EventBusName"] == {"Fn::GetAtt": ["MemberEventBus", "Name"]}
    assert listed["Properties"]["Statement"]["Principal"] == {"AWS": {"Ref": "MemberAccounts"}}
    assert listed["Properties"]["Statement"]["Condition"] == sources
    arn = f"arn:aws:events:{REGION}:{OPERATOR_ACCOUNT}:event-bus/reloader-members"
    org_stmt = render([stmt], refs(OrganizationId="o-exampleorgid"))
    member = {"aws:PrincipalOrgID": "o-exampleorgid"}
    assert decide(org_stmt, "events:PutEvents", "MemberEventBus.Arn", {**member, "events:source": ["aws.ssm", "aws.ecs"]}) == "Allow"
    # The members' environment-file events (their EnvironmentFileRule forwards aws.s3).
    assert decide(org_stmt, "events:PutEvents", "MemberEventBus.Arn", {**member, "events:source": ["aws.s3"]}) == "Allow"
    listed_stmt = render([listed["Properties"]["Statement"]], refs(MemberAccounts=MEMBERS))
    assert decide(listed_stmt, "events:PutEvents", "MemberEventBus.Arn", {"events:source": ["aws.s3", "aws.secretsmanager"]}) == "Allow"
    assert decide(listed_stmt, "events:PutEvents", "MemberEventBus.Arn", {"events:source": ["aws.s3", "my.app"]}) == "ImplicitDeny"
    for bad in [{**member, "events:source": ["aws.ssm", "my.app"]}, {**member, "events:source": ["ecs-reloader"]}, member,
                {"aws:PrincipalOrgID": "o-someoneelse", "events:source": ["aws.ssm"]}]:
        assert decide(org_stmt, "events:PutEvents", "MemberEventBus.Arn", bad) == "ImplicitDeny", bad
    assert arn.endswith("-members")
    # Without members there is no forwarding bus, and no policy lets another account in.
    for name, r in res.items():
        if r["Type"] in ("AWS::Events::EventBusPolicy", "AWS::Events::EventBus") or name in MEMBER_RULES + [MEMBER_S3_RULE]:
            assert r.get("Condition") in ("HasMembers", "HasOrganization", "HasMemberAccounts"), name
    assume = res["AssumeMemberRolesPolicy"]
    assert assume["Condition"] == "HasMemberRole"
    [stmt] = assume["Properties"]["PolicyDocument"]["Statement"]
    assert _actions(stmt) == ["sts:AssumeRole"]
    assert stmt["Resource"] == {"Fn::Sub": "arn:${AWS::Partition}:iam::*:role/${MemberRoleName}"}, "the member role name only"
    assert stmt["Condition"] == {"Fn::If": ["HasOrganization", {"StringEquals": {"aws:ResourceOrgID": {"Ref": "OrganizationId"}}}, {"Ref": "AWS::NoValue"}]}
    r = refs(OrganizationId="o-exampleorgid", MemberRoleName="ecs-reloader-target")
    rendered = render([stmt], r, conditions(r))
    role = f"arn:aws:iam::{MEMBERS[0]}:role/ecs-reloader-target"
    assert decide(rendered, "sts:AssumeRole", role, {"aws:ResourceOrgID": "o-exampleorgid"}) == "Allow"
    assert decide(rendered, "sts:AssumeRole", role, {"aws:ResourceOrgID": "o-other"}) == "ImplicitDeny", "outside the organisation"
    assert decide(rendered, "sts:AssumeRole", f"arn:aws:iam::{MEMBERS[0]}:role/admin", {"aws:ResourceOrgID": "o-exampleorgid"}) == "ImplicitDeny"
    r = refs(MemberAccounts=MEMBERS, MemberRoleName="ecs-reloader-target")
    assert "Condition" not in render([stmt], r, conditions(r))[0], "MemberAccounts alone: the name is the limit"
    pattern = res["RolloutProblemsRule"]["Properties"]["EventPattern"]
    unreachable = {"version": "0", "id": "1", "detail-type": "Target Unreachable", "source": "ecs-reloader", "account": OPERATOR_ACCOUNT,
                   "time": "2026-11-24T00:00:00Z", "region": REGION, "resources": [], "detail": {"account": MEMBERS[0], "region": REGION}}
    assert EventPattern.load(json.dumps(pattern)).matches_event(unreachable), "the alarm counts unreachable targets"
    # Without the organisation parameters, the central template is what it was: no policy, no role.
    assert central["Parameters"]["MemberRoleName"]["Default"] == ""
    assert central["Parameters"]["OrganizationId"]["Default"] == ""


@pytest.fixture(scope="module")
def own_endpoint():
    """An emulator of this module's own: another module's Lambda-mode stack would put a schedule
    rule with a Lambda target on the operator's default bus, which the emulator matches against
    every event and answers 500 for."""
    yield from conftest.emulator(ROOT / "tests/infra/moto_cfn_launcher.py")


def _client(endpoint, name, creds=None, region=REGION):
    creds = creds or {"AccessKeyId": "test", "SecretAccessKey": "test", "SessionToken": None}
    return boto3.client(
        name,
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
    )


def _deploy(cfn, name, template, params):
    cfn.create_stack(
        StackName=name,
        TemplateBody=template.read_text(),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()],
        Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"],
    )
    stack = cfn.describe_stacks(StackName=name)["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
    resources = {r["LogicalResourceId"]: r["PhysicalResourceId"] for r in cfn.list_stack_resources(StackName=name)["StackResourceSummaries"]}
    return resources, {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


def test_deploys_in_two_member_accounts_and_the_central_one(own_endpoint):
    endpoint = own_endpoint
    # Central: the operator (as a Fargate service), trusting the two member accounts. (Not Lambda
    # mode here: the emulator matches its schedule rule against every event put on the bus and
    # answers 500 for the Lambda target.)
    _client(endpoint, "ecs").create_cluster(clusterName="ops")
    central_res, central_out = _deploy(
        _client(endpoint, "cloudformation"),
        "org-central",
        TEMPLATE,
        {
            "Mode": "ecs",
            "ManagedClusters": "prod",
            "ImageUri": f"{OPERATOR_ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/ecs-reloader:1",
            "OperatorCluster": "ops",
            "Subnets": "subnet-0123456789abcdef0",
            "SecurityGroups": "sg-0123456789abcdef0",
            "MemberAccounts": ",".join(MEMBERS),
            "MemberRoleName": "ecs-reloader-target",
        },
    )
    operator_role = central_out["OperatorRoleArn"]
    assert f":{OPERATOR_ACCOUNT}:role/" in operator_role
    assert central_out["EventBusArn"] == f"arn:aws:events:{REGION}:{OPERATOR_ACCOUNT}:event-bus/org-central-members"
    for rule in MEMBER_RULES + [MEMBER_S3_RULE]:
        assert _client(endpoint, "events").list_targets_by_rule(Rule=central_res[rule], EventBusName="org-central-members")["Targets"][0]["Arn"] == central_out["QueueArn"]
    iam = _client(endpoint, "iam")
    [doc] = [iam.get_role_policy(RoleName=central_res["TaskRole"], PolicyName=n)["PolicyDocument"] for n in iam.list_role_policies(RoleName=central_res["TaskRole"])["PolicyNames"] if n == "assume-member-roles"]
    doc = doc if isinstance(doc, dict) else json.loads(doc) if doc.startswith("{\"") else __import__("ast").literal_eval(doc)
    assert doc["Statement"][0]["Resource"] == "arn:aws:iam::*:role/ecs-reloader-target"

    sts = _client(endpoint, "sts")
    # The outsider forwards to the same bus (the emulator does not enforce the bus's policy, which
    # AWS would refuse it by): its events still reach no rule, as the patterns name MEMBERS only.
    for account in MEMBERS + [OUTSIDER]:
        # Deploying into the member account, as a StackSet's execution role does.
        builder = sts.assume_role(RoleArn=f"arn:aws:iam::{account}:role/stackset-execution", RoleSessionName="deploy")["Credentials"]
        res, out = _deploy(
            _client(endpoint, "cloudformation", builder),
            "ecs-reloader-member",
            MEMBER,
            {"OperatorRoleArn": operator_role, "ExternalId": EXTERNAL_ID, "CentralEventBusArn": central_out["EventBusArn"], "ManagedClusters": "prod,staging",
             # One member deploys CODE_DEPLOY services through CodeDeploy and names an
             # environment-file bucket, the others neither.
             "CodeDeployApplications": "orders" if account == MEMBERS[0] else "",
             "EnvironmentFileBuckets": "conf,team-env" if account == MEMBERS[0] else ""},
        )
        assert ("TargetCodeDeployPolicy" in res) == (account == MEMBERS[0]), account
        assert ("TargetEnvironmentFilePolicy" in res) == ("EnvironmentFileRule" in res) == (account == MEMBERS[0]), account
        assert out["TargetRoleArn"] == f"arn:aws:iam::{account}:role/ecs-reloader-target"
        role = _client(endpoint, "iam", builder).get_role(RoleName="ecs-reloader-target")["Role"]
        assert role["Arn"] == out["TargetRoleArn"]
        # The operator's account assumes it with the external ID, and is refused without it.
        ok = sts.assume_role(RoleArn=out["TargetRoleArn"], RoleSessionName="ecs-reloader", ExternalId=EXTERNAL_ID)
        assert ok["AssumedRoleUser"]["Arn"].startswith(f"arn:aws:sts::{account}:assumed-role/ecs-reloader-target/")
        for wrong in [{"ExternalId": "guess"}, {}]:
            with pytest.raises(Exception, match="AccessDenied"):
                sts.assume_role(RoleArn=out["TargetRoleArn"], RoleSessionName="ecs-reloader", **wrong)
        events = _client(endpoint, "events", builder)
        for rule in CHANGE_RULES:
            [t] = events.list_targets_by_rule(Rule=res[rule])["Targets"]
            assert t["Arn"] == central_out["EventBusArn"], rule

        # A rotation in the member account reaches the central queue: member rule -> central bus
        # -> central rule -> queue.
        e = json.loads((EVENTS / "rotation_succeeded.json").read_text())
        e["detail"]["additionalEventData"]["SecretId"] = f"arn:aws:secretsmanager:{REGION}:{account}:secret:app/db-AbCdEf"
        put = events.put_events(Entries=[{"Source": e["source"], "DetailType": e["detail-type"], "Detail": json.dumps(e["detail"]), "EventBusName": "default"}])
        assert put["FailedEntryCount"] == 0, put
        sqs = _client(endpoint, "sqs")
        deadline = time.time() + (10 if account in MEMBERS else 3)
        bodies = []
        while not bodies and time.time() < deadline:
            got = sqs.receive_message(QueueUrl=central_out["QueueUrl"], MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
            for m in got:
                bodies.append(json.loads(m["Body"]))
                sqs.delete_message(QueueUrl=central_out["QueueUrl"], ReceiptHandle=m["ReceiptHandle"])
        expected = [e["detail"]["additionalEventData"]["SecretId"]] if account in MEMBERS else []
        assert [b["detail"]["additionalEventData"]["SecretId"] for b in bodies] == expected, (account, bodies)

        # An environment file written in a named bucket reaches it too (member's
        # EnvironmentFileRule -> central bus -> MembersEnvironmentFileRule -> queue); one in a
        # bucket not named, or in a member that names none, does not.
        for bucket in ["other", "conf"]:
            s3 = _s3_event(bucket=bucket, account=account)
            put = events.put_events(Entries=[{"Source": s3["source"], "DetailType": s3["detail-type"], "Detail": json.dumps(s3["detail"]), "EventBusName": "default"}])
            assert put["FailedEntryCount"] == 0, put
        deadline = time.time() + (10 if account == MEMBERS[0] else 3)
        bodies = []
        while not bodies and time.time() < deadline:
            got = sqs.receive_message(QueueUrl=central_out["QueueUrl"], MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
            for m in got:
                bodies.append(json.loads(m["Body"]))
                sqs.delete_message(QueueUrl=central_out["QueueUrl"], ReceiptHandle=m["ReceiptHandle"])
        expected = [("aws.s3", account, "conf")] if account == MEMBERS[0] else []
        # (The emulator's forwarded envelope drops `account`: the fixture's requester names it.)
        assert [(b["source"], b["detail"]["requester"], b["detail"]["bucket"]["name"]) for b in bodies] == expected, (account, bodies)
        if account == MEMBERS[0]:
            [t] = events.list_targets_by_rule(Rule=res["EnvironmentFileRule"])["Targets"]
            assert t["Arn"] == central_out["EventBusArn"]
            doc = _client(endpoint, "iam", builder).get_role_policy(RoleName="ecs-reloader-target", PolicyName="ecs-reloader-target-environment-files")["PolicyDocument"]
            doc = doc if isinstance(doc, dict) else json.loads(doc) if doc.startswith("{\"") else __import__("ast").literal_eval(doc)
            assert [(st["Action"], st["Resource"]) for st in doc["Statement"]] == [("s3:ListBucket", ["arn:*:s3:::conf", "arn:*:s3:::team-env"])]

    # Another region of a member account (a StackSet's second instance): the forwarding rules
    # only; the role, being global, comes from RoleRegion's instance.
    builder = sts.assume_role(RoleArn=f"arn:aws:iam::{MEMBERS[0]}:role/stackset-execution", RoleSessionName="deploy")["Credentials"]
    res, out = _deploy(
        _client(endpoint, "cloudformation", builder, region="eu-west-1"),
        "ecs-reloader-member",
        MEMBER,
        {"OperatorRoleArn": operator_role, "ExternalId": EXTERNAL_ID, "CentralEventBusArn": central_out["EventBusArn"], "ManagedClusters": "prod",
         "CodeDeployApplications": "orders", "EnvironmentFileBuckets": "conf-eu"},
    )
    assert "TargetRole" not in res and "TargetRoleArn" not in out and "TargetCodeDeployPolicy" not in res
    assert "TargetEnvironmentFilePolicy" not in res
    assert all(rule in res for rule in CHANGE_RULES + ["EnvironmentFileRule"]), "S3 sends a bucket's events in its own region"
