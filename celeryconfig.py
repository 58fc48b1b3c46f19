"""Celery settings for ihub, from the baseline in ../shared/PITFALLS.md.

Loaded by ``tasks.app.create_app`` (``tasks.conf.load_celeryconfig``), which then applies what the
environment decides (``pipeline.settings``): the broker URL, its key prefix and the visibility
timeout. Nothing here reads the environment.
Every setting below names the failure it prevents.
"""

from __future__ import annotations

from kombu import Exchange, Queue

FETCH_QUEUE = "ihub.fetch"
PROCESS_QUEUE = "ihub.process"

# Must exceed the longest countdown plus the longest hard time limit, or Redis redelivers
# a task that is still waiting or running (PITFALLS 1-3). Checked at start by tasks.checks.
VISIBILITY_TIMEOUT = 2 * 3600  # the default; IHUB_VISIBILITY_TIMEOUT overrides it at app creation

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]  # never pickle from the broker (PITFALLS 22)
task_ignore_result = True  # the database holds outcomes; no result backend (PITFALLS 18, 24)
result_backend = None

task_acks_late = True  # a task is acked after it ran, so a dead worker's task comes back
task_reject_on_worker_lost = True  # ... even when the pool child was killed (PITFALLS 5)
worker_prefetch_multiplier = 1  # no hoarding; the visibility clock starts at fetch (PITFALLS 2, 12)
worker_eta_task_limit = 1000  # retries waiting in a worker's memory are bounded (PITFALLS 12)
worker_cancel_long_running_tasks_on_connection_loss = True  # PITFALLS 6
worker_soft_shutdown_timeout = 25.0  # finish or requeue before the orchestrator kills (PITFALLS 11)
worker_enable_soft_shutdown_on_idle = True

broker_connection_retry_on_startup = True  # PITFALLS 8: start before Redis and wait for it
broker_connection_retry = True
broker_connection_max_retries = None  # keep trying; the supervisor sees a live but waiting worker
broker_heartbeat = 0
task_publish_retry = True
task_publish_retry_policy = {
    "max_retries": 5,
    "interval_start": 0.2,
    "interval_step": 0.5,
    "interval_max": 3,
}

_transport = {
    "visibility_timeout": VISIBILITY_TIMEOUT,
    # kombu restores unacked messages of dead workers in a sweep; tuned so that recovery takes
    # visibility_timeout + ~10 s rather than + ~100 s (PITFALLS 4)
    "unacked_restore_interval": 10,
    "unacked_restore_throttle": 1,
    "socket_timeout": 30,
    "socket_connect_timeout": 10,
    "global_keyprefix": "",  # IHUB_BROKER_PREFIX, applied at app creation
}
broker_transport_options = _transport
result_backend_transport_options = {"visibility_timeout": VISIBILITY_TIMEOUT}
visibility_timeout = VISIBILITY_TIMEOUT  # all three places (PITFALLS 3)

worker_send_task_events = True  # Flower sees tasks (PITFALLS 37)
task_send_sent_event = True
# ... in task.multi batches a quarter-second apart, not one PUBLISH per event (tasks/consumer.py)
worker_consumer = "tasks.consumer:EventBatchingConsumer"
worker_hijack_root_logger = True

task_default_queue = PROCESS_QUEUE
task_queues = tuple(Queue(q, Exchange(q), routing_key=q) for q in (FETCH_QUEUE, PROCESS_QUEUE))
task_default_exchange = PROCESS_QUEUE
task_default_routing_key = PROCESS_QUEUE
task_routes = {
    "ihub.fetch_delta": {"queue": FETCH_QUEUE},
    "ihub.reconcile": {"queue": FETCH_QUEUE},
    "ihub.redrive": {"queue": FETCH_QUEUE},
    "ihub.process_record": {"queue": PROCESS_QUEUE},
    "ihub.process_batch": {"queue": PROCESS_QUEUE},
}
timezone = "UTC"
enable_utc = True
