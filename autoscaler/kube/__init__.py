"""The Kubernetes backend: pods by label selector (source), the Deployment's scale
subresource and pod-deletion-cost (actuator), and custom.metrics.k8s.io (metrics API)."""
