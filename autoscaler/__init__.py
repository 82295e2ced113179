"""iofleet's connection-count autoscaler (`python -m autoscaler`).

Source -> policy -> actuator (see `autoscaler.model`):
- `autoscaler.policy`: pure HPA v2 semantics for one Pods metric; no I/O.
- `autoscaler.kube`: the Kubernetes backend. `KubernetesSource` watches the server pods
  and scrapes `iofleet_connections`; `KubernetesActuator` keeps pod-deletion-cost and,
  in direct mode, writes the Deployment's scale subresource; `metrics_api` serves
  custom.metrics.k8s.io to the kube-apiserver.
- `autoscaler.controller`: the loop joining them, and the timeline `/status` shows.
- `autoscaler.local`: the local backend (`--backend local`, started by `iofleet up
  --max M`). `LocalSource` lists the servers of the fleet's `fleet.json` with their
  `/readyz` and scraped connections; `LocalActuator` starts servers into free balancer
  slots and drains the emptiest out (HAProxy runtime API, or nginx's reload through
  the fleet's readiness watcher), with the same `Controller` and status page.
"""
