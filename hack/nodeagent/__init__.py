"""A small kubelet for hack/devcluster: test infrastructure, not part of kubemr.

The development cluster has a real kube-apiserver and kube-controller-manager
but no container runtime. This agent registers one Node, binds pending Pods
to it, and runs their containers as local processes isolated with bubblewrap,
reporting status back the way a kubelet does, so that Jobs, Deployments,
garbage collection, service-account tokens and RBAC all behave for real in
tests. It only uses the Python standard library, so it runs under any
``python3`` without installing anything.
"""
