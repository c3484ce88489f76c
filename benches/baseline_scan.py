"""The baseline of benchmark 2: a minimal sequential boto3 scan, the way one-off redeploy
scripts work. It makes the lower-bound calls (ListServices pages, DescribeServices by 10,
DescribeTaskDefinition per distinct revision, DescribeSecret per distinct secret) and prints the
seconds it took. Usage: AWS_ENDPOINT_URL=... python3 baseline_scan.py CLUSTER [CLUSTER ...]
"""

import sys
import time

import boto3


def main():
    ecs = boto3.client("ecs")
    sm = boto3.client("secretsmanager")
    started = time.perf_counter()
    task_defs, secrets = set(), set()
    for cluster in sys.argv[1:]:
        arns, token = [], None
        while True:
            page = ecs.list_services(cluster=cluster, maxResults=100, **({"nextToken": token} if token else {}))
            arns += page["serviceArns"]
            token = page.get("nextToken")
            if not token:
                break
        for i in range(0, len(arns), 10):
            for s in ecs.describe_services(cluster=cluster, services=arns[i : i + 10], include=["TAGS"])["services"]:
                task_defs.add(s["taskDefinition"])
    for td in task_defs:
        for c in ecs.describe_task_definition(taskDefinition=td)["taskDefinition"]["containerDefinitions"]:
            for s in c.get("secrets", []):
                secrets.add(s["valueFrom"])
    for s in secrets:
        sm.describe_secret(SecretId=s)
    print(f"{time.perf_counter() - started:.3f}")


if __name__ == "__main__":
    main()
