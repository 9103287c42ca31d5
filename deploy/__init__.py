"""Kubernetes manifests (kustomize) and the generator of their derived files."""
