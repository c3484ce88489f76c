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
    TEMPLATE,
    VALUE_READS,
    _actions,
    _event,
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


def test_the_central_bus_accepts_only_the_organisation_or_listed_accounts(central):
    res = central["Resources"]
    bus = res["MemberEventBus"]
    assert bus["Condition"] == "HasMembers" and bus["Properties"]["Name"] == {"Fn::Sub": "${AWS::StackName}-members"}
    sources = {"ForAllValues:StringEquals": {"events:source": ["aws.secretsmanager", "aws.ssm", "aws.ecs"]}, "Null": {"events:source": "false"}}
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
    for bad in [{**member, "events:source": ["aws.ssm", "my.app"]}, {**member, "events:source": ["ecs-reloader"]}, member,
                {"aws:PrincipalOrgID": "o-someoneelse", "events:source": ["aws.ssm"]}]:
        assert decide(org_stmt, "events:PutEvents", "MemberEventBus.Arn", bad) == "ImplicitDeny", bad
    assert arn.endswith("-members")
    # Without members there is no forwarding bus, and no policy lets another account in.
    for name, r in res.items():
        if r["Type"] in ("AWS::Events::EventBusPolicy", "AWS::Events::EventBus") or name in MEMBER_RULES:
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
    for rule in MEMBER_RULES:
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
             # One member deploys CODE_DEPLOY services through CodeDeploy, the others none.
             "CodeDeployApplications": "orders" if account == MEMBERS[0] else ""},
        )
        assert ("TargetCodeDeployPolicy" in res) == (account == MEMBERS[0]), account
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

    # Another region of a member account (a StackSet's second instance): the forwarding rules
    # only; the role, being global, comes from RoleRegion's instance.
    builder = sts.assume_role(RoleArn=f"arn:aws:iam::{MEMBERS[0]}:role/stackset-execution", RoleSessionName="deploy")["Credentials"]
    res, out = _deploy(
        _client(endpoint, "cloudformation", builder, region="eu-west-1"),
        "ecs-reloader-member",
        MEMBER,
        {"OperatorRoleArn": operator_role, "ExternalId": EXTERNAL_ID, "CentralEventBusArn": central_out["EventBusArn"], "ManagedClusters": "prod",
         "CodeDeployApplications": "orders"},
    )
    assert "TargetRole" not in res and "TargetRoleArn" not in out and "TargetCodeDeployPolicy" not in res
    assert all(rule in res for rule in CHANGE_RULES)
