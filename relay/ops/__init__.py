"""Operator commands that run once and exit (`byok-relay rotate-keys`, `import-node-db`): never
imported while serving.

May import anything in `relay` and `backends`.
"""
