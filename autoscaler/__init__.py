"""iofleet's connection-count autoscaler (`python -m autoscaler`).

Source -> policy -> actuator (see `autoscaler.model`):
- `autoscaler.policy`: pure HPA v2 semantics for one Pods metric; no I/O.
- `autoscaler.kube`: the Kubernetes backend. `KubernetesSource` watches the server pods
  and scrapes `iofleet_connections`; `KubernetesActuator` keeps pod-deletion-cost and,
  in direct mode, writes the Deployment's scale subresource; `metrics_api` serves
  custom.metrics.k8s.io to the kube-apiserver.
- `autoscaler.controller`: the loop joining them, and the timeline `/status` shows.

A local backend (`--backend local`, started by `iofleet up`) must provide:
- a `Source` whose `nodes()` lists the server processes (name, admin address,
  ready = `/readyz` answers 200, deleting = being drained) with their scraped
  connections (`autoscaler.scrape.scrape_all` does the scraping);
- an `Actuator` with `owns_replicas = True`, `current_replicas()` = live processes,
  `scale(n)` that starts servers and adds them to the balancer on the way up, and on
  the way down picks the emptiest (`autoscaler.kube.actuator.deletion_ranks` order),
  takes it out of the balancer, drains it (`POST /admin/drain`) and stops it; and
  `rank()` that may do nothing (it picks at scale-down time instead);
- then `Controller(spec_from_settings(settings), source, actuator, ...)` and
  `create_status_app(controller.status)` work unchanged.
"""
