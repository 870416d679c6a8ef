"""modship on Kubernetes, by responsibility (one port per class):

- ``api``: the API client wrapper, with one choke point for errors;
- ``names``: names, labels and owner references of what modship creates;
- ``caches``: what one process remembers across cycles (applied content, Deployment health);
- ``target``: the Target port (Deployments, flag ConfigMaps, Services, the split);
- ``traffic``: the ``TrafficRouter`` port, with one module per way of splitting:
  ``gateway`` (HTTPRoute), ``istio`` (VirtualService), ``nginx`` (Ingress canary), ``ratios``;
- ``rollouts``, ``store`` and ``events``: the RolloutStore port on the Rollout custom resource,
  its cache, and core/v1 Events;
- ``lease``: one acting replica (a coordination.k8s.io/v1 Lease);
- ``cleanup``: undoing what modship did for a deleted Rollout;
- ``no_router``: the ``builtin`` metrics provider, which has no router to read on a cluster.
"""
