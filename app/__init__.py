"""Herd's API: the FastAPI service (routers, admission, placement, relaying a job's events to its client).

It imports the core (`herd`), never `workers` and never llama_cpp.
"""
