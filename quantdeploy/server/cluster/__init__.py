"""Several replicas of one served model behind one OpenAI-compatible endpoint, on Ray Serve (`serve --replicas`).

Each replica is the one-process server (create_app around one loaded model) inside a Ray Serve replica; the front
(front.py) is the HTTP endpoint. Needs the `cluster` extra (Ray Serve); nothing here is imported otherwise.
"""

from .config import ClusterSettings
from .launch import serve_cluster

__all__ = ["ClusterSettings", "serve_cluster"]
