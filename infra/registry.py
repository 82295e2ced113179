"""The ECR repositories the fleet's images are pushed to (`iofleet images push`) and the
regional stacks pull from: scanned on push, tags immutable, old images expired."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from server.contract import IMAGE_REPOSITORIES

# Untagged images come only from interrupted pushes (tags are immutable and never
# moved): a week is time to look at one, then it goes.
UNTAGGED_DAYS = 7


def lifecycle_policy(keep_count: int) -> str:
    """ECR lifecycle rules: untagged images after UNTAGGED_DAYS, then all but the newest
    `keep_count`. The `any` rule must have the highest priority number (ECR user guide,
    "Lifecycle policy properties")."""
    rules = [
        {
            "rulePriority": 1,
            "description": f"untagged images after {UNTAGGED_DAYS} days",
            "selection": {
                "tagStatus": "untagged",
                "countType": "sinceImagePushed",
                "countUnit": "days",
                "countNumber": UNTAGGED_DAYS,
            },
            "action": {"type": "expire"},
        },
        {
            "rulePriority": 2,
            "description": f"all but the newest {keep_count} images",
            "selection": {
                "tagStatus": "any",
                "countType": "imageCountMoreThan",
                "countNumber": keep_count,
            },
            "action": {"type": "expire"},
        },
    ]
    return json.dumps({"rules": rules}, sort_keys=True)


@dataclass
class ImageRepositoriesArgs:
    regions: tuple[str, ...]
    keep_count: int
    tags: dict[str, str]


class ImageRepositories(pulumi.ComponentResource):
    """One ECR repository per image (IMAGE_REPOSITORIES) in each region."""

    urls: dict[str, dict[str, pulumi.Output[str]]]
    """region -> repository name -> repository URL."""

    def __init__(
        self, name: str, args: ImageRepositoriesArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("iofleet:registry:ImageRepositories", name, None, opts)
        self.urls = {
            region: {
                repo: self._create_repository(name, region, repo, args)
                for repo in IMAGE_REPOSITORIES
            }
            for region in args.regions
        }
        self.register_outputs({"urls": self.urls})

    def _create_repository(
        self, name: str, region: str, repo: str, args: ImageRepositoriesArgs
    ) -> pulumi.Output[str]:
        repository = aws.ecr.Repository(
            f"{name}-{region}-{repo}",
            name=repo,
            # pulumi-aws 7: a resource names its region, so one stack holds them all.
            region=region,
            # A tag names one build for good: a stack pinned to `<git sha>` gets that
            # build, and a push of another build under the same tag fails.
            image_tag_mutability="IMMUTABLE",
            image_scanning_configuration={"scan_on_push": True},
            # Never deleted with images in it: running stacks pull from it. `destroy`
            # stops here until the images are deleted on purpose.
            force_delete=False,
            tags=args.tags,
            opts=pulumi.ResourceOptions(parent=self),
        )
        aws.ecr.LifecyclePolicy(
            f"{name}-{region}-{repo}-lifecycle",
            repository=repository.name,
            region=region,
            policy=lifecycle_policy(args.keep_count),
            opts=pulumi.ResourceOptions(parent=self),
        )
        url: pulumi.Output[str] = repository.repository_url
        return url
