"""celery-operator: Celery workers and a singleton beat on Kubernetes, from one CeleryCluster."""

GROUP = "celeryoperator.dev"
VERSION = "v1alpha1"
PLURAL = "celeryclusters"
KIND = "CeleryCluster"
