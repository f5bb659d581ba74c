"""cyme: the Celery instance manager.

Every machine runs one ``cyme-branch`` daemon; together the branches manage
a cluster of Celery worker instances behind one HTTP API.
"""

__version__ = "0.1.0"
