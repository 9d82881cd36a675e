"""Kanmon's arq workers: one WorkerSettings per queue; jobs are thin, the domain does the work."""
