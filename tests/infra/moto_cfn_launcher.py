"""tests/emulator/moto_launcher.py, plus one fix of moto 5.2.1's CloudFormation: an
AWS::Lambda::Function's `Architectures` is dropped (every function reads back as x86_64), so the
architecture a template renders could not be checked. Usage: moto_cfn_launcher.py PORT"""

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


if __name__ == "__main__":
    _keep_architectures()
    moto_launcher.main()
