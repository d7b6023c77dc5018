"""dcron: a distributed cron whose jobs live in a Raft-replicated SQLite store."""

__version__ = "0.1.0"
