"""Each stack file, run under mocks: the components exist with the properties the
issue asks for."""

from __future__ import annotations

import json
from typing import Any

import pulumi
import pytest
from pulumi_fleet import REGIONAL_STACKS, FleetMocks, after_deploy, run_stack, stack_config

from infra.config import DEFAULT_CLUSTER_VERSION
from infra.node_autoscaling import KARPENTER_CHART

PROD = ("prod-us-east-1", "prod-eu-west-1")


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def server_pod(fleet: FleetMocks) -> dict[str, Any]:
    (deployment,) = fleet.kubernetes("Deployment", "iofleet-server")
    return deployment.manifest()["spec"]["template"]["spec"]


def setting(stack: str, key: str) -> Any:
    return json.loads(stack_config(stack)[f"iofleet:{key}"])


@pytest.mark.parametrize("stack", REGIONAL_STACKS)
@pulumi.runtime.test
def test_components_have_their_type_tokens(stack: str) -> Any:
    fleet = run_stack(stack)

    def check() -> None:
        types = {r.type for r in fleet.resources}
        for token in (
            "iofleet:network:Network",
            "iofleet:redis:RedisCache",
            "iofleet:cluster:Cluster",
            "iofleet:workloads:SocketService",
            "iofleet:workloads:Autoscaler",
            "iofleet:balancer:BalancerController",
            "iofleet:balancer:Balancer",
            "iofleet:observability:Observability",
        ):
            assert token in types

    return after_deploy(check)


@pytest.mark.parametrize("stack", REGIONAL_STACKS)
@pulumi.runtime.test
def test_network_spans_azs_with_public_and_private_subnets(stack: str) -> Any:
    fleet = run_stack(stack)
    azs = setting(stack, "az_count")

    def check() -> None:
        subnets = fleet.of_type("aws:ec2/subnet:Subnet")
        public = [s for s in subnets if "kubernetes.io/role/elb" in s.inputs["tags"]]
        private = [s for s in subnets if "kubernetes.io/role/internal-elb" in s.inputs["tags"]]
        assert len(public) == len(private) == azs >= 2
        assert len({s.inputs["availabilityZone"] for s in private}) == azs
        assert all(s.inputs["mapPublicIpOnLaunch"] is False for s in subnets)
        nats = fleet.of_type("aws:ec2/natGateway:NatGateway")
        assert len(nats) == (1 if stack == "dev" else azs)

    return after_deploy(check)


@pytest.mark.parametrize("stack", REGIONAL_STACKS)
@pulumi.runtime.test
def test_redis_is_multi_az_tls_auth_encrypted_and_private(stack: str) -> Any:
    fleet = run_stack(stack)

    def check() -> None:
        group = fleet.one("aws:elasticache/replicationGroup:ReplicationGroup").inputs
        assert group["clusterMode"] == "disabled"
        assert group["numCacheClusters"] >= 2
        assert group["multiAzEnabled"] is True
        assert group["automaticFailoverEnabled"] is True
        assert group["transitEncryptionEnabled"] is True
        assert group["atRestEncryptionEnabled"] is True
        assert group["authToken"]
        assert group["parameterGroupName"]
        token = fleet.one("random:index/randomPassword:RandomPassword", "redis")
        assert token.inputs["special"] is False
        sg = next(
            r
            for r in fleet.of_type("aws:ec2/securityGroup:SecurityGroup")
            if r.name.startswith("redis")
        )
        (rule,) = sg.inputs["ingress"]
        assert rule["fromPort"] == rule["toPort"] == 6379
        assert rule["securityGroups"] == ["sg-c"]  # the EKS cluster (node) security group
        assert "cidrBlocks" not in rule
        secret = fleet.kubernetes("Secret", "iofleet-server")[0]
        url = secret.inputs["stringData"]["redis-url"]
        assert url.startswith("rediss://:pw-redis-auth-token@master.")
        assert url.endswith(":6379/0")
        assert "stringData" in secret.secrets or "stringData.redis-url" in secret.secrets

    return after_deploy(check)


@pytest.mark.parametrize("stack", REGIONAL_STACKS)
@pulumi.runtime.test
def test_cluster_has_managed_nodes_across_azs_and_oidc(stack: str) -> Any:
    fleet = run_stack(stack)

    def check() -> None:
        eks = fleet.one("aws:eks/cluster:Cluster").inputs
        assert eks["version"] == DEFAULT_CLUSTER_VERSION
        # Nodes follow the control plane, so an upgrade moves both.
        assert fleet.one("aws:eks/nodeGroup:NodeGroup").inputs["version"] == eks["version"]
        assert eks["encryptionConfig"]["resources"] == ["secrets"]
        nodes = fleet.one("aws:eks/nodeGroup:NodeGroup").inputs
        private = [
            s
            for s in fleet.of_type("aws:ec2/subnet:Subnet")
            if "kubernetes.io/role/internal-elb" in s.inputs["tags"]
        ]
        assert len(nodes["subnetIds"]) == len(private)
        assert nodes["scalingConfig"]["minSize"] == setting(stack, "node_min")
        cni = fleet.one("aws:eks/addon:Addon", "vpc-cni").inputs
        assert json.loads(cni["configurationValues"]) == {"enableNetworkPolicy": "true"}
        oidc = fleet.one("aws:iam/openIdConnectProvider:OpenIdConnectProvider").inputs
        assert oidc["clientIdLists"] == ["sts.amazonaws.com"]
        assert oidc["url"] == "https://oidc.eks.aws/id/ABC"
        # The LB controller's role is assumable only by its service account (IRSA).
        role = next(r for r in fleet.of_type("aws:iam/role:Role") if r.name.endswith("-lbc"))
        trust = json.loads(role.inputs["assumeRolePolicy"])
        condition = trust["Statement"][0]["Condition"]["StringEquals"]
        assert condition["oidc.eks.aws/id/ABC:sub"] == (
            "system:serviceaccount:kube-system:aws-load-balancer-controller"
        )

    return after_deploy(check)


@pytest.mark.parametrize("stack", REGIONAL_STACKS)
@pulumi.runtime.test
def test_server_deployment_probes_drain_and_security(stack: str) -> Any:
    fleet = run_stack(stack)
    drain = setting(stack, "drain_delay") + setting(stack, "drain_seconds")

    def check() -> None:
        pod = server_pod(fleet)
        (container,) = pod["containers"]
        assert container["image"] == stack_config(stack)["iofleet:image"]
        assert container["command"] == ["python", "-m", "server"]
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
        hook = " ".join(container["lifecycle"]["preStop"]["exec"]["command"])
        assert "127.0.0.1:9000/admin/drain?wait=true" in hook
        assert "IOFLEET_ADMIN_TOKEN" in hook and "method='POST'" in hook
        assert pod["terminationGracePeriodSeconds"] > drain
        assert container["resources"]["requests"]["cpu"]
        assert container["resources"]["limits"]["memory"]
        zones = [c["topologyKey"] for c in pod["topologySpreadConstraints"]]
        assert "topology.kubernetes.io/zone" in zones
        context = container["securityContext"]
        assert context["runAsNonRoot"] is True and context["runAsUser"] != 0
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert pod["automountServiceAccountToken"] is False

    return after_deploy(check)


@pytest.mark.parametrize("stack", REGIONAL_STACKS)
@pulumi.runtime.test
def test_server_environment_matches_the_contract(stack: str) -> Any:
    fleet = run_stack(stack)

    def check() -> None:
        env = env_of(server_pod(fleet)["containers"][0])
        assert env["IOFLEET_PORT"] == "8000" and env["IOFLEET_ADMIN_PORT"] == "9000"
        assert env["IOFLEET_AUTH"] == "jwt"
        assert env["IOFLEET_PING_INTERVAL"] == "25" and env["IOFLEET_PING_TIMEOUT"] == "20"
        assert env["IOFLEET_CORS_ORIGINS"] == ",".join(setting(stack, "cors_origins"))
        assert env["IOFLEET_DRAIN_SECONDS"] == str(setting(stack, "drain_seconds"))
        assert env["IOFLEET_NODE_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
        for var, key in (
            ("IOFLEET_REDIS_URL", "redis-url"),
            ("IOFLEET_ADMIN_TOKEN", "admin-token"),
            ("IOFLEET_JWT_SECRET", "jwt-secret"),
        ):
            assert env[var] == {"secretKeyRef": {"name": "iofleet-server", "key": key}}

    return after_deploy(check)


@pytest.mark.parametrize("stack", REGIONAL_STACKS)
@pulumi.runtime.test
def test_replicas_are_left_to_the_autoscaler(stack: str) -> Any:
    fleet = run_stack(stack)

    def check() -> None:
        assert fleet.ignore_changes["server-deployment"] == ["spec.replicas"]
        (deployment,) = fleet.kubernetes("Deployment", "iofleet-server")
        assert deployment.inputs["spec"]["replicas"] == setting(stack, "min_replicas")
        nodes = next(k for k in fleet.ignore_changes if k.endswith("-nodes"))
        assert fleet.ignore_changes[nodes] == ["scalingConfig.desiredSize"]

    return after_deploy(check)


@pytest.mark.parametrize("stack", REGIONAL_STACKS)
@pulumi.runtime.test
def test_hpa_keys_on_connections_with_configured_behavior(stack: str) -> Any:
    fleet = run_stack(stack)

    def check() -> None:
        (hpa,) = fleet.kubernetes("HorizontalPodAutoscaler", "iofleet-server")
        spec = hpa.manifest()["spec"]
        assert hpa.inputs["apiVersion"] == "autoscaling/v2"
        assert spec["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": "iofleet-server",
        }
        (metric,) = spec["metrics"]
        assert metric["type"] == "Pods"
        assert metric["pods"]["metric"]["name"] == "iofleet_connections"
        assert metric["pods"]["target"] == {
            "type": "AverageValue",
            "averageValue": str(setting(stack, "target_connections")),
        }
        assert spec["minReplicas"] == setting(stack, "min_replicas")
        assert spec["maxReplicas"] == setting(stack, "max_replicas")
        down = spec["behavior"]["scaleDown"]
        assert down["stabilizationWindowSeconds"] == setting(
            stack, "scale_down_stabilization_seconds"
        )
        assert down["policies"][0]["value"] == setting(stack, "scale_down_percent")

    return after_deploy(check)


@pytest.mark.parametrize("stack", REGIONAL_STACKS)
@pulumi.runtime.test
def test_admin_port_stays_inside_the_cluster(stack: str) -> Any:
    fleet = run_stack(stack)

    def check() -> None:
        (admin,) = fleet.kubernetes("Service", "iofleet-server-admin")
        assert admin.inputs["spec"]["type"] == "ClusterIP"
        for service in fleet.kubernetes("Service"):
            spec = service.inputs["spec"]
            if spec.get("type") in ("LoadBalancer", "NodePort"):
                assert all(p["targetPort"] != "admin" for p in spec["ports"])
        (policy,) = fleet.kubernetes("NetworkPolicy", "iofleet-server")
        rules = policy.inputs["spec"]["ingress"]
        admin_rule = next(r for r in rules if r["ports"][0]["port"] == "admin")
        peers = json.dumps(admin_rule["from"])
        assert "iofleet-autoscaler" in peers and "monitoring" in peers
        (pdb,) = fleet.kubernetes("PodDisruptionBudget", "iofleet-server")
        assert pdb.inputs["spec"]["maxUnavailable"] == 1

    return after_deploy(check)


@pytest.mark.parametrize("stack", REGIONAL_STACKS)
@pulumi.runtime.test
def test_autoscaler_rbac_api_services_and_cert(stack: str) -> Any:
    fleet = run_stack(stack)

    def check() -> None:
        (deployment,) = fleet.kubernetes("Deployment", "iofleet-autoscaler")
        (container,) = deployment.inputs["spec"]["template"]["spec"]["containers"]
        assert container["command"] == ["python", "-m", "autoscaler", "--backend", "kubernetes"]
        assert container["ports"][0]["containerPort"] == 6443
        (role,) = fleet.kubernetes("Role", "iofleet-autoscaler")
        # hpa mode (the default): the HPA owns the replica count; no scale write here.
        (pods,) = role.inputs["rules"]
        assert pods["resources"] == ["pods"]
        assert set(pods["verbs"]) == {"get", "list", "watch", "patch"}
        assert fleet.kubernetes("ClusterRole") and all(
            "delete" not in rule["verbs"]
            for r in fleet.kubernetes("ClusterRole")
            for rule in r.inputs["rules"]
        )
        refs = {b.inputs["roleRef"]["name"]: b for b in fleet.kubernetes("ClusterRoleBinding")}
        assert "system:auth-delegator" in refs
        (reader,) = fleet.kubernetes("RoleBinding", "iofleet-autoscaler-auth-reader")
        assert reader.inputs["metadata"]["namespace"] == "kube-system"
        assert reader.inputs["roleRef"]["name"] == "extension-apiserver-authentication-reader"
        services = {
            a.inputs["spec"]["version"]: a.inputs["spec"] for a in fleet.kubernetes("APIService")
        }
        assert set(services) == {"v1beta1", "v1beta2"}
        for spec in services.values():
            assert spec["group"] == "custom.metrics.k8s.io"
            assert spec["insecureSkipTLSVerify"] is False
            assert "caBundle" not in spec  # cert-manager's cainjector writes it
            assert spec["service"] == {
                "name": "iofleet-autoscaler",
                "namespace": "iofleet",
                "port": 443,
            }
        # The serving cert's Secret is cert-manager's (test_infra_autoscaler_tls).
        (cert,) = [
            r
            for r in fleet.resources
            if r.inputs.get("kind") == "Certificate"
            and r.inputs["metadata"]["name"] == "iofleet-autoscaler"
        ]
        assert cert.inputs["spec"]["secretName"] == "iofleet-autoscaler-tls"

    return after_deploy(check)


@pytest.mark.parametrize("stack", PROD)
@pulumi.runtime.test
def test_alb_ingress_is_sticky_with_long_idle_and_drain_delay(stack: str) -> Any:
    fleet = run_stack(stack)
    drain = setting(stack, "drain_delay") + setting(stack, "drain_seconds")

    def check() -> None:
        (ingress,) = fleet.kubernetes("Ingress", "iofleet")
        notes = ingress.inputs["metadata"]["annotations"]
        assert ingress.inputs["spec"]["ingressClassName"] == "alb"
        assert notes["alb.ingress.kubernetes.io/target-type"] == "ip"
        groups = notes["alb.ingress.kubernetes.io/target-group-attributes"]
        assert "stickiness.enabled=true" in groups and "stickiness.type=lb_cookie" in groups
        delay = int(groups.split("deregistration_delay.timeout_seconds=")[1].split(",")[0])
        assert delay >= drain
        attrs = notes["alb.ingress.kubernetes.io/load-balancer-attributes"]
        idle = int(attrs.split("idle_timeout.timeout_seconds=")[1].split(",")[0])
        assert idle > 25 + 20
        assert "HTTPS" in notes["alb.ingress.kubernetes.io/listen-ports"]
        (ns,) = fleet.kubernetes("Namespace", "iofleet")
        assert (
            ns.inputs["metadata"]["labels"]["elbv2.k8s.aws/pod-readiness-gate-inject"] == "enabled"
        )
        (release,) = [
            r
            for r in fleet.of_type("kubernetes:helm.sh/v3:Release")
            if r.inputs["chart"] == "aws-load-balancer-controller"
        ]
        sa = release.inputs["values"]["serviceAccount"]
        assert sa["annotations"]["eks.amazonaws.com/role-arn"]

    return after_deploy(check)


@pulumi.runtime.test
def test_nginx_balancer_uses_cookie_affinity() -> Any:
    fleet = run_stack("dev", {"iofleet:balancer": "nginx"})

    def check() -> None:
        (ingress,) = fleet.kubernetes("Ingress", "iofleet")
        notes = ingress.inputs["metadata"]["annotations"]
        assert ingress.inputs["spec"]["ingressClassName"] == "nginx"
        assert notes["nginx.ingress.kubernetes.io/affinity"] == "cookie"
        assert int(notes["nginx.ingress.kubernetes.io/proxy-read-timeout"]) > 45
        charts = {r.inputs["chart"] for r in fleet.of_type("kubernetes:helm.sh/v3:Release")}
        assert charts == {
            "aws-load-balancer-controller",
            "ingress-nginx",
            "cert-manager",
            KARPENTER_CHART[0],
        }

    return after_deploy(check)


@pulumi.runtime.test
def test_haproxy_balancer_discovers_pods_through_the_headless_service() -> Any:
    fleet = run_stack("dev")

    def check() -> None:
        (config_map,) = fleet.kubernetes("ConfigMap", "iofleet-haproxy")
        config = config_map.inputs["data"]["haproxy.cfg"]
        assert "iofleet-server-headless.iofleet.svc.cluster.local:8000" in config
        assert "server-template" in config and "resolvers" in config
        assert "cookie iofleet_node insert" in config
        assert "check port 9000" in config and "uri /readyz" in config
        tunnel = int(config.split("timeout tunnel ")[1].split("s")[0])
        assert tunnel > 25 + 20
        (headless,) = fleet.kubernetes("Service", "iofleet-server-headless")
        assert headless.inputs["spec"]["clusterIP"] == "None"
        # HAProxy health-checks /readyz itself; a draining pod must keep its DNS record.
        assert headless.inputs["spec"]["publishNotReadyAddresses"] is True
        (lb,) = fleet.kubernetes("Service", "iofleet-haproxy")
        assert lb.inputs["spec"]["type"] == "LoadBalancer"
        assert [p["targetPort"] for p in lb.inputs["spec"]["ports"]] == ["http"]
        assert not fleet.kubernetes("Ingress")
        (haproxy,) = fleet.kubernetes("Deployment", "iofleet-haproxy")
        (container,) = haproxy.manifest()["spec"]["template"]["spec"]["containers"]
        assert container["lifecycle"]["preStop"] == {"sleep": {"seconds": 5}}
        # HAProxy checks /readyz on the admin port: the NetworkPolicy lets it in.
        (policy,) = fleet.kubernetes("NetworkPolicy", "iofleet-server")
        assert "iofleet-haproxy" in json.dumps(policy.inputs["spec"]["ingress"])

    return after_deploy(check)


@pytest.mark.parametrize("stack", REGIONAL_STACKS)
@pulumi.runtime.test
def test_observability_rules_dashboard_and_alarms(stack: str) -> Any:
    fleet = run_stack(stack)
    operator = setting(stack, "prometheus_operator")

    def check() -> None:
        if operator:
            rules = fleet.kubernetes("PrometheusRule")[0].inputs["spec"]["groups"]
            assert (
                fleet.kubernetes("ServiceMonitor")[0].inputs["spec"]["endpoints"][0]["port"]
                == "admin"
            )
        else:
            import yaml

            text = fleet.kubernetes("ConfigMap", "iofleet-server-rules")[0].inputs["data"]
            rules = yaml.safe_load(text["iofleet.rules.yaml"])["groups"]
        alerts = {r["alert"] for g in rules for r in g["rules"]}
        for alert in (
            "IofleetConnectSlow",
            "IofleetHandlerLatencyHigh",
            "IofleetMemoryPerConnectionHigh",
            "IofleetEventLoopLag",
            "IofleetCpuHigh",
        ):
            assert alert in alerts
        (dashboard,) = fleet.kubernetes("ConfigMap", "iofleet-dashboard")
        assert json.loads(dashboard.inputs["data"]["iofleet.json"])["panels"]
        alarms = {
            (a.inputs["namespace"], a.inputs["metricName"])
            for a in fleet.of_type("aws:cloudwatch/metricAlarm:MetricAlarm")
        }
        for metric in (
            "EngineCPUUtilization",
            "DatabaseMemoryUsagePercentage",
            "ReplicationLag",
            "Evictions",
        ):
            assert ("AWS/ElastiCache", metric) in alarms
        if stack in PROD:
            assert ("AWS/ApplicationELB", "HTTPCode_ELB_5XX_Count") in alarms
            assert ("AWS/ApplicationELB", "UnHealthyHostCount") in alarms
            unhealthy = next(
                a
                for a in fleet.of_type("aws:cloudwatch/metricAlarm:MetricAlarm")
                if a.inputs["metricName"] == "UnHealthyHostCount"
            )
            assert unhealthy.inputs["dimensions"] == {
                "LoadBalancer": "app/iofleet-" + stack + "-pub/1",
                # The group the HTTPS listener forwards to (80 only redirects with TLS).
                "TargetGroup": "targetgroup/k8s-443/1",
            }

    return after_deploy(check)


@pulumi.runtime.test
def test_global_stack_builds_latency_records_with_health_checks() -> Any:
    fleet = run_stack("global")

    def check() -> None:
        refs = [r.inputs["name"] for r in fleet.of_type("pulumi:pulumi:StackReference")]
        assert refs == [
            "acme/iofleet/prod-us-east-1",
            "acme/iofleet/prod-eu-west-1",
        ]
        records = fleet.of_type("aws:route53/record:Record")
        checks = fleet.of_type("aws:route53/healthCheck:HealthCheck")
        assert len(records) == len(checks) == 2
        regions = sorted(r.inputs["latencyRoutingPolicies"][0]["region"] for r in records)
        assert regions == ["eu-west-1", "us-east-1"]
        for record in records:
            assert record.inputs["name"] == stack_config("global")["iofleet:domain"]
            assert record.inputs["healthCheckId"].endswith("-id")
            assert record.inputs["aliases"][0]["evaluateTargetHealth"] is True
        # Each region is checked the way it serves (the mocks: eu-west-1 without TLS).
        assert sorted((c.inputs["type"], c.inputs["port"]) for c in checks) == [
            ("HTTP", 80),
            ("HTTPS", 443),
        ]
        assert not fleet.of_type("aws:eks/cluster:Cluster")

    return after_deploy(check)


@pulumi.runtime.test
def test_global_stack_can_use_global_accelerator_with_client_affinity() -> Any:
    fleet = run_stack("global", {"iofleet:global_routing": "accelerator"})

    def check() -> None:
        listeners = fleet.of_type("aws:globalaccelerator/listener:Listener")
        assert sorted(lsn.inputs["portRanges"][0]["fromPort"] for lsn in listeners) == [80, 443]
        assert all(lsn.inputs["clientAffinity"] == "SOURCE_IP" for lsn in listeners)
        groups = fleet.of_type("aws:globalaccelerator/endpointGroup:EndpointGroup")
        regions = sorted(g.inputs["endpointGroupRegion"] for g in groups)
        assert regions == ["eu-west-1", "eu-west-1", "us-east-1", "us-east-1"]
        for group in groups:
            (endpoint,) = group.inputs["endpointConfigurations"]
            assert endpoint["endpointId"].startswith("arn:aws:elasticloadbalancing:")
        assert not fleet.of_type("aws:route53/record:Record")

    return after_deploy(check)
