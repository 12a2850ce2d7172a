"""Redis Lua that moves waiting RQ jobs from one queue to another: the drain's and the sweeper's.

A worker that drains (workers/drain.py) and the API's sweeper of dead workers (app/sweeper.py) both hand a
worker's private queue back to the pool. The move is one atomic script, so no job is ever in neither list
or in both, the oldest lands first at the head of the target, and each job's RQ `origin` follows it.
"""

from __future__ import annotations


def move_all_lua(source: str, target: str, queue_keys: str, target_name: str) -> str:
    """Lua statements moving every entry of list `source` to the head of `target`, oldest first, counting
    them in a local `moved`. The arguments are Lua expressions (`KEYS[1]`, `ARGV[1]`): `queue_keys` is the
    set of queue keys RQ reads (the target is added to it), `target_name` the target queue's RQ name."""
    return f"""
local moved = 0
redis.call('SADD', {queue_keys}, {target})
while true do
  local id = redis.call('RPOP', {source})
  if not id then break end
  local job = 'rq:job:' .. id
  if redis.call('EXISTS', job) == 1 then
    redis.call('HSET', job, 'origin', {target_name})
  end
  redis.call('LPUSH', {target}, id)
  moved = moved + 1
end
"""


# KEYS: the queue emptied, the queue filled, the set of queue keys. ARGV: the filled queue's name.
# Returns how many jobs moved.
MOVE_QUEUE = move_all_lua("KEYS[1]", "KEYS[2]", "KEYS[3]", "ARGV[1]") + "return moved\n"
