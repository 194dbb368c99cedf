"""The pipeline's use cases, one module per step, in the order a job meets them:

``create`` → ``split`` → ``window`` (with ``recut`` when the server refuses a piece) → ``reduce``;
``next`` says what must run next for a job, ``ending`` runs the side effects of a job's end,
``control`` cancels and retries, ``local`` runs a whole job in this process.

Each step takes ids, reads and writes through the job store and object storage, and is safe to run
twice: results go to deterministic keys and a step whose result exists is skipped.
"""
