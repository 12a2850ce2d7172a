"""The local stack: redis-server, gunicorn, the workers and nginx as supervised child processes.

This is how ``make up`` / ``herd up`` runs Herd on a machine without Docker: every config is rendered
under HERD_RUN_DIR, checked, and each process is started, health-checked and stopped in order.
"""
