"""The engine on a Ray Serve cluster: GPU workers (replica.py) that each run the in-process engine,
a router that keeps each checkpoint's jobs on the replicas holding it (routing.py), and the
gateway's EngineClient that reaches them through a streaming deployment handle (client.py).

Only replica processes import torch (through runtime/local.py, when a replica starts); the gateway
imports Ray Serve and the job types.
"""
