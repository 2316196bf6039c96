"""The Celery worker's entry module: `celery -A consent_service.celery_worker worker --concurrency 1`.

Like a `__main__`, this module exists to be loaded by a process launcher, so
it reads settings when imported; nothing else in the package does.
"""

from consent_service.jobs import celery_app
from consent_service.settings import Settings

app = celery_app(Settings().celery_broker_url)
