"""kubemr: MapReduce over shell commands, on one machine or on Kubernetes.

The map, combine and reduce steps of a job are ordinary shell commands that
read stdin and write stdout (the Hadoop Streaming contract). The same
`MapReduceJob` manifest runs here with `kubemr run` and on a cluster with
`kubectl create -f`.
"""

__version__ = "0.1.0"
