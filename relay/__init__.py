"""The inter-region relay (docs/regions.md): joins regional Redis deployments so a
room spans regions, forwarding only the rooms the far region has members of."""
