"""The local backend (`python -m autoscaler --backend local`, started by `iofleet up`).

The fleet is the one `<state dir>/fleet.json` records: `LocalSource` probes and scrapes
its server processes, `LocalActuator` starts servers into free balancer slots and
drains the emptiest ones out, through a `Lever` per balancer kind (`levers`).
`backend.run` joins them with the same `Controller` and status page as Kubernetes.
"""
