"""Builds or changes the demo world in the emulator named by AWS_ENDPOINT_URL.

  demo_world.py create   a cluster whose services reference secrets in every supported way
  demo_world.py rotate   rotate app/db (a new AWSCURRENT version), as a rotation's last step does
"""

import sys
import time

import boto3

REGION = "us-east-1"


def clients():
    kw = dict(region_name=REGION)
    return boto3.client("ecs", **kw), boto3.client("secretsmanager", **kw), boto3.client("ssm", **kw)


def task_def(ecs, family, secrets=(), log=(), registry=None):
    container = {"name": "app", "image": "public.ecr.aws/nginx/nginx:latest", "memory": 128,
                 "secrets": [{"name": f"SECRET_{i}", "valueFrom": v} for i, v in enumerate(secrets)]}
    if log:
        container["logConfiguration"] = {"logDriver": "splunk", "secretOptions": [
            {"name": f"token-{i}", "valueFrom": v} for i, v in enumerate(log)]}
    if registry:
        container["repositoryCredentials"] = {"credentialsParameter": registry}
    out = ecs.register_task_definition(family=family, containerDefinitions=[container])
    return out["taskDefinition"]["taskDefinitionArn"]


def create():
    ecs, sm, ssm = clients()
    db = sm.create_secret(Name="app/db", SecretString='{"password":"one"}')
    replica = sm.create_secret(Name="app/db-replica", SecretString="r")
    pinned = sm.create_secret(Name="app/license", SecretString="l")
    sm.create_secret(Name="sidecar/conjur", SecretString="c")
    ssm.put_parameter(Name="/app/feature-flags", Value="on", Type="SecureString")
    # Secrets Manager dates are whole seconds: let the deployments below be clearly later.
    time.sleep(1.2)
    ecs.create_cluster(clusterName="demo")
    partial = db["ARN"].rsplit("-", 1)[0]
    services = {
        "api": task_def(ecs, "api", secrets=[db["ARN"]]),
        "worker": task_def(ecs, "worker", secrets=[partial + ":password::", "/app/feature-flags"]),
        "logs": task_def(ecs, "logs", log=[db["ARN"]]),
        "replica-reader": task_def(ecs, "replica-reader", secrets=[replica["ARN"]]),
        "billing": task_def(ecs, "billing", secrets=[f"{pinned['ARN']}:::{pinned['VersionId']}"]),
        "legacy": task_def(ecs, "legacy", secrets=[db["ARN"]]),
        "sidecar": task_def(ecs, "sidecar"),
    }
    tags = {"legacy": [{"key": "ecs-reloader/enabled", "value": "false"}],
            "sidecar": [{"key": "ecs-reloader/secrets", "value": "sidecar/conjur"}]}
    for name, td in services.items():
        ecs.create_service(cluster="demo", serviceName=name, taskDefinition=td, desiredCount=1,
                           **({"tags": tags[name]} if name in tags else {}))
    print(f"created cluster demo with {len(services)} services")


def rotate():
    _, sm, _ = clients()
    # Secrets Manager dates are whole seconds: a rotation in the deployments' own second would be
    # reported as "in the same second as the deployment" (and count as after). Let the demo tell
    # the ordinary story: a version plainly newer than the deployment.
    time.sleep(1.2)
    out = sm.put_secret_value(SecretId="app/db", SecretString='{"password":"two"}')
    print(f"rotated app/db: AWSCURRENT is now version {out['VersionId']}")


if __name__ == "__main__":
    commands = {"create": create, "rotate": rotate}
    if len(sys.argv) != 2 or sys.argv[1] not in commands:
        sys.exit(f"usage: {sys.argv[0]} create|rotate")
    commands[sys.argv[1]]()
