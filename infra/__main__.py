"""iofleet's Pulumi program: reads the stack config, wires the components, exports.

A regional stack builds Network -> Cluster -> NodeAutoscaler (Karpenter) -> RedisCache ->
BalancerController -> SocketService (namespace, Services) -> Balancer (the route) -> the
server Deployment -> Headroom -> Autoscaler -> Observability; the global stack reads the
regional stacks' outputs and builds GlobalRouting; a registry stack (made first) holds
the ECR repositories the images are pushed to.
"""

# `infra` is a package of the project (pyproject.toml), installed into `.venv` by `make
# setup` (`pip install -e '.[infra]'`), so `infra.*`, `iofleet.*` and `server.*` import the
# same way under `pulumi up` (which runs this file from infra/) and under pytest.
import pulumi

from infra.balancer import Balancer, BalancerArgs, BalancerController, BalancerControllerArgs
from infra.cluster import Cluster, ClusterArgs
from infra.config import (
    GlobalConfig,
    RegionalConfig,
    RegistryConfig,
    aws_access,
    load,
    qualify,
)
from infra.elasticache import RedisCache, RedisCacheArgs
from infra.global_routing import GlobalRouting, GlobalRoutingArgs, Region
from infra.jwt_secret import jwt_secret, previous_jwt_secret
from infra.network import Network, NetworkArgs
from infra.node_autoscaling import Headroom, HeadroomArgs, NodeAutoscaler, NodeAutoscalerArgs
from infra.observability import Observability, ObservabilityArgs
from infra.region_link import PeerNetwork, RegionPeering, RegionPeeringArgs, Relay, RelayArgs
from infra.registry import ImageRepositories, ImageRepositoriesArgs
from infra.workloads import (
    HAPROXY_LABELS,
    Autoscaler,
    AutoscalerArgs,
    SocketService,
    SocketServiceArgs,
)


def regional(cfg: RegionalConfig) -> None:
    tags = {"iofleet:stack": cfg.stack, "iofleet:managed-by": "pulumi"}
    network = Network(
        "network",
        NetworkArgs(cfg.vpc_cidr, cfg.az_count, cfg.name, cfg.single_nat_gateway, tags),
    )
    cluster = Cluster(
        "cluster",
        ClusterArgs(
            cluster_name=cfg.name,
            version=cfg.cluster_version,
            region=cfg.region,
            private_subnet_ids=network.private_subnet_ids,
            public_subnet_ids=network.public_subnet_ids,
            public_access_cidrs=list(cfg.cluster_public_access_cidrs),
            instance_types=list(cfg.node_instance_types),
            node_min=cfg.node_min,
            node_desired=cfg.node_desired,
            node_max=cfg.node_max,
            admin_arns=list(cfg.cluster_admin_arns),
            aws_access=aws_access(),
            tags=tags,
        ),
    )
    if cfg.node_autoscaler == "karpenter":
        NodeAutoscaler(
            "node-autoscaler",
            NodeAutoscalerArgs(cfg, cluster, network.private_subnet_ids, tags),
        )
    redis = RedisCache(
        "redis",
        RedisCacheArgs(
            vpc_id=network.vpc_id,
            subnet_ids=network.private_subnet_ids,
            client_security_group_id=cluster.node_security_group_id,
            replication_group_id=cfg.name,
            node_type=cfg.redis_node_type,
            replicas=cfg.redis_replicas,
            engine_version=cfg.redis_engine_version,
            engine=cfg.redis_engine,
            snapshot_retention_days=cfg.redis_snapshot_retention_days,
            mode=cfg.redis_mode,
            shards=cfg.redis_shards,
            auth_rotation=cfg.redis_auth_rotation,
            tags=tags,
        ),
    )
    controller = BalancerController(
        "balancer-controller",
        BalancerControllerArgs(cfg.balancer, cluster, cfg.name, cfg.region, network.vpc_id, cfg),
    )
    secret = jwt_secret(cfg)
    service = SocketService(
        "server",
        SocketServiceArgs(
            settings=cfg,
            redis_url=redis.url,
            jwt_secret=secret,
            jwt_secret_previous=previous_jwt_secret(cfg),
            provider=cluster.provider,
            alb_readiness_gate=cfg.balancer == "alb",
            admin_clients=(
                [{"podSelector": {"matchLabels": HAPROXY_LABELS}}]
                if cfg.balancer == "haproxy"
                else []
            ),
            depends_on=list(controller.releases),
        ),
    )
    balancer = Balancer(
        "balancer",
        BalancerArgs(
            settings=cfg,
            provider=cluster.provider,
            namespace=cfg.namespace,
            public_service=service.public_service,
            headless_service=service.headless_service,
            depends_on=[*service.route_needs, *controller.releases],
        ),
    )
    service.create_deployment(after=balancer.route)
    if cfg.headroom_pods:
        Headroom(
            "headroom",
            HeadroomArgs(cfg, cluster.provider, cfg.namespace, list(service.route_needs)),
        )
    # Observability waits for the autoscaler too: it scrapes the cert-manager it installs.
    scaled: list[pulumi.Resource] = []
    if cfg.has_autoscaler:
        scaled.append(
            Autoscaler(
                "autoscaler",
                AutoscalerArgs(
                    cfg, cluster.provider, service.deployment_name, cfg.namespace, [service]
                ),
            )
        )
    Observability(
        "observability",
        ObservabilityArgs(
            provider=cluster.provider,
            namespace=cfg.namespace,
            prometheus_namespace=cfg.prometheus_namespace,
            prometheus_operator=cfg.prometheus_operator,
            selector_label=cfg.prometheus_selector_label,
            install_prometheus_stack=cfg.prometheus_stack_install,
            cert_manager=cfg.has_autoscaler,
            admin_service_labels=service.admin_service_labels,
            redis_member_ids=redis.member_cluster_ids,
            lb_type=balancer.lb_type,
            lb_arn_suffix=balancer.lb_arn_suffix,
            target_group_arn_suffix=balancer.target_group_arn_suffix,
            alarm_email=cfg.alarm_email,
            name_prefix=cfg.name,
            tags=tags,
            depends_on=[service, *scaled],
        ),
    )
    if cfg.region_peers:
        # The far regions' Redis URLs (endpoint + AUTH token) are secret outputs of
        # their stacks; they reach the relay only through its Secret.
        far = {
            peer: pulumi.StackReference(f"relay-peer-{peer}", stack_name=qualify(peer))
            for peer in cfg.region_peers
        }
        Relay(
            "relay",
            RelayArgs(
                settings=cfg,
                provider=cluster.provider,
                redis_url=redis.url,
                far_redis_urls={
                    peer: pulumi.Output.secret(ref.require_output("redis_url")).apply(str)
                    for peer, ref in far.items()
                },
                depends_on=[service],
            ),
        )
    pulumi.export("region", cfg.region)
    pulumi.export("cluster_name", cluster.name)
    pulumi.export("kubeconfig", cluster.kubeconfig)
    pulumi.export("namespace", cfg.namespace)
    pulumi.export("redis_mode", cfg.redis_mode)
    pulumi.export("redis_endpoint", redis.endpoint)
    if cfg.redis_mode == "replication":
        pulumi.export("redis_primary_endpoint", redis.primary_endpoint)
    pulumi.export("balancer", cfg.balancer)
    pulumi.export("public_hostname", balancer.hostname)
    pulumi.export("public_scheme", "https" if cfg.certificate_arn else "http")
    pulumi.export("balancer_arn", balancer.lb_arn)
    pulumi.export("balancer_zone_id", balancer.lb_zone_id)
    # What the global stack peers (region_peering) and the far relays read (secret).
    pulumi.export("vpc_id", network.vpc_id)
    pulumi.export("vpc_cidr", network.vpc_cidr)
    pulumi.export("private_route_table_ids", network.private_route_table_ids)
    pulumi.export(
        "redis_security_group_id",
        redis.replication_group.security_group_ids.apply(lambda ids: ids[0]),
    )
    pulumi.export("redis_url", redis.url)
    if secret is not None and not cfg.jwt_secret.get_secret_value():
        pulumi.export("jwt_secret", secret)


GLOBAL_TAGS = {"iofleet:stack": "global", "iofleet:managed-by": "pulumi"}


def global_(cfg: GlobalConfig) -> None:
    regions = []
    networks = []
    for name in (qualify(stack) for stack in cfg.regional_stacks):
        ref = pulumi.StackReference(name)
        if cfg.region_peering:
            networks.append(
                PeerNetwork(
                    key=name.rsplit("/", 1)[-1],
                    region=ref.require_output("region"),
                    vpc_id=ref.require_output("vpc_id"),
                    vpc_cidr=ref.require_output("vpc_cidr"),
                    private_route_table_ids=ref.require_output("private_route_table_ids"),
                    redis_security_group_id=ref.require_output("redis_security_group_id"),
                )
            )
        regions.append(
            Region(
                stack=name,
                region=ref.require_output("region"),
                hostname=ref.require_output("public_hostname"),
                lb_arn=ref.require_output("balancer_arn"),
                lb_zone_id=ref.require_output("balancer_zone_id"),
                scheme=ref.require_output("public_scheme"),
                balancer=ref.require_output("balancer"),
                key=name.rsplit("/", 1)[-1],
            )
        )
    routing = GlobalRouting(
        "global",
        GlobalRoutingArgs(
            routing=cfg.global_routing,
            aws_access=aws_access(),
            regions=regions,
            domain=cfg.domain,
            hosted_zone_id=cfg.hosted_zone_id,
            health_check_path=cfg.health_check_path,
        ),
    )
    if networks:
        peering = RegionPeering(
            "region-link",
            RegionPeeringArgs(networks=networks, aws_access=aws_access(), tags=GLOBAL_TAGS),
        )
        pulumi.export("region_peering_ids", peering.connection_ids)
    pulumi.export("endpoint", routing.endpoint)
    pulumi.export("regions", [r.stack for r in regions])


def registry(cfg: RegistryConfig) -> None:
    tags = {"iofleet:stack": cfg.stack, "iofleet:managed-by": "pulumi"}
    repositories = ImageRepositories(
        "images", ImageRepositoriesArgs(cfg.regions, cfg.image_keep_count, tags)
    )
    pulumi.export("repositories", repositories.urls)


settings = load()
if isinstance(settings, GlobalConfig):
    global_(settings)
elif isinstance(settings, RegistryConfig):
    registry(settings)
else:
    regional(settings)
