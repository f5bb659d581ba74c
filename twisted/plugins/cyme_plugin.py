"""twistd plugin: ``twistd cyme-branch`` runs a cyme branch."""

from twisted.application.service import ServiceMaker

cymeBranch = ServiceMaker(
    "cyme branch", "cyme.tap", "The Celery instance manager's branch daemon.", "cyme-branch"
)
